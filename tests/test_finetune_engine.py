"""The engine's fine-tune options (all off by default): frozen parameters, distillation from the
--init model on its own classes, copy-paste of new-class instances; and a short fine-tune run
with all three that keeps the frozen part bit for bit and resumes to the same weights."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from maskformer.__main__ import main
from maskformer.checkpoint import save_checkpoint
from maskformer.config import Config, apply_overrides
from maskformer.data import open_dataset
from maskformer.data.coco import write_dataset
from maskformer.data.synthetic import synthetic_meta, write_synthetic_dataset
from maskformer.model import build_model
from maskformer.training.copy_paste import CopyPaste, _recolor
from maskformer.training.finetune import (
    distill_losses,
    freeze,
    frozen_prefixes,
    keep_frozen_in_eval,
    new_class_fraction,
)
from maskformer.training.loop import TrainOptions, train
from maskformer.training.trainer import Trainer


def test_fine_tune_options_are_off_by_default():
    cfg = Config()
    assert cfg.solver.freeze == "" and cfg.solver.distill_weight == 0.0
    assert cfg.solver.distill_mask_weight == 0.0 and cfg.input.copy_paste == 0.0


def test_freeze_turns_off_gradients_and_keeps_batch_norm_statistics(tiny_cfg):
    model = build_model(tiny_cfg.model)
    prefixes = frozen_prefixes(" backbone , ")
    assert prefixes == ("backbone",)
    n = freeze(model, prefixes)
    frozen = [p for name, p in model.named_parameters() if name.startswith("backbone.")]
    assert n == len(frozen) > 0 and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for name, p in model.named_parameters() if "backbone" not in name)
    model.train()
    keep_frozen_in_eval(model, prefixes)
    assert not model.backbone.training and model.predictor.training
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    with pytest.raises(ValueError, match="no parameter of the model is under 'backbone_x'"):
        freeze(model, ("backbone_x",))


def _outputs(logits: torch.Tensor, masks: torch.Tensor) -> dict:
    return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def test_distillation_is_zero_when_the_student_answers_as_the_teacher():
    torch.manual_seed(0)
    b, q, k_old, h = 2, 5, 3, 8
    t_logits, t_masks = torch.randn(b, q, k_old + 1), torch.randn(b, q, h, h)
    # The student: the teacher's answers plus a new class it never predicts.
    s_logits = torch.cat(
        [t_logits[..., :k_old], torch.full((b, q, 1), -1e9), t_logits[..., -1:]], -1
    )
    targets = [
        {"labels": torch.tensor([0]), "masks": torch.zeros(1, 4 * h, 4 * h)} for _ in range(b)
    ]
    losses = distill_losses(_outputs(s_logits, t_masks), _outputs(t_logits, t_masks), targets, 3)
    assert losses["loss_distill_ce"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_distill_mask"].item() == pytest.approx(0.0, abs=1e-6)
    # Giving the new class probability on old queries costs; so does another mask.
    s_new = s_logits.clone()
    s_new[..., k_old] = 5.0
    assert (
        distill_losses(_outputs(s_new, t_masks), _outputs(t_logits, t_masks), targets, 3)[
            "loss_distill_ce"
        ]
        > 0.1
    )
    assert (
        distill_losses(_outputs(s_logits, -t_masks), _outputs(t_logits, t_masks), targets, 3)[
            "loss_distill_mask"
        ]
        > 0.1
    )


def test_distillation_leaves_out_queries_on_new_class_ground_truth():
    b, q, k_old, h = 1, 2, 3, 8
    t_masks = torch.full((b, q, h, h), -10.0)
    t_masks[0, 0, :4] = 10.0  # query 0: the top half, where the new class is
    t_masks[0, 1, 4:] = 10.0  # query 1: the bottom half
    new_gt = torch.zeros(1, 4 * h, 4 * h)
    new_gt[0, : 2 * h] = 1
    targets = [{"labels": torch.tensor([k_old]), "masks": new_gt}]  # label 3: the new class
    frac = new_class_fraction(t_masks, targets, k_old)
    torch.testing.assert_close(frac, torch.tensor([[1.0, 0.0]]))
    t_logits = torch.zeros(b, q, k_old + 1)
    s_logits = torch.zeros(b, q, k_old + 2)
    s_logits[0, 0, k_old] = 20.0  # query 0 learns the new class: not distilled, costs nothing
    s_masks = t_masks.clone()
    s_masks[0, 0] = -t_masks[0, 0]
    losses = distill_losses(
        _outputs(s_logits, s_masks), _outputs(t_logits, t_masks), targets, k_old
    )
    # Query 1 alone is distilled: its student spreads mass over one more class than the teacher.
    assert losses["loss_distill_ce"].item() == pytest.approx(np.log(5 / 4), rel=1e-4)
    assert losses["loss_distill_mask"].item() == pytest.approx(0.0, abs=1e-4)


@pytest.fixture(scope="module")
def cross_data(tmp_path_factory):
    """Synthetic images whose circles are relabelled as a 9th class, "new" (a thing)."""
    src = write_synthetic_dataset(tmp_path_factory.mktemp("cp") / "src", 6, seed=4, size=64)
    ds = open_dataset(src)
    m = synthetic_meta()
    meta = replace(
        m,
        class_names=(*m.class_names, "new"),
        isthing=(*m.isthing, True),
        colors=(*m.colors, (1, 2, 3)),
        dataset_ids=(*m.dataset_ids, 9),
    )
    samples = []
    for i in range(len(ds)):
        s = ds.load(i)
        segs = [
            {**g, "category_id": 8 if g["category_id"] == 0 else g["category_id"]}
            for g in s.segments
        ]
        samples.append(replace(s, segments=segs))
    return write_dataset(tmp_path_factory.mktemp("cp") / "data", samples, meta)


def test_copy_paste_pastes_new_class_instances_deterministically(cross_data):
    ds = open_dataset(cross_data)
    cp = CopyPaste(ds, prob=1.0, from_class=8, seed=3, repeats=4)
    assert len(cp) == 4 * len(ds) and cp.meta == ds.meta and cp.classes == [8]
    assert len(CopyPaste(ds, prob=1.0, from_class=0).classes) > 1  # every thing class
    pasted = 0
    for j in range(len(cp)):
        a, b = cp.load(j), cp.load(j)
        np.testing.assert_array_equal(a.image, b.image)  # the same item: the same pastes
        np.testing.assert_array_equal(a.id_map, b.id_map)
        ids = set(np.unique(a.id_map).tolist()) - {0}
        assert ids == {int(g["id"]) for g in a.segments}
        assert all(g["area"] == int((a.id_map == g["id"]).sum()) for g in a.segments)
        base = ds.load(j % len(ds))
        new_before = sum(g["category_id"] == 8 for g in base.segments)
        pasted += sum(g["category_id"] == 8 for g in a.segments) - new_before
        changed = (a.id_map != base.id_map) | (a.image != base.image).any(-1)
        new_ids = [g["id"] for g in a.segments if g["id"] > max(s["id"] for s in base.segments)]
        assert np.isin(a.id_map[changed], new_ids).all()  # only pasted pixels changed
        assert all(g["category_id"] == 8 for g in a.segments if g["id"] in new_ids)
    assert pasted >= len(cp)  # one or two per item, a few may find no place
    assert (
        CopyPaste(ds, prob=0.0, from_class=8).load(5).image.tobytes() == ds.load(5).image.tobytes()
    )


def test_copy_paste_recolours_only_the_pasted_pixels(cross_data):
    """``input.copy_paste_color``: the same instances pasted at the same places (the colours come
    from a stream of their own), with new colours; the rest of the image is untouched."""
    ds = open_dataset(cross_data)
    plain = CopyPaste(ds, prob=1.0, from_class=8, seed=3, repeats=2)
    tinted = CopyPaste(ds, prob=1.0, from_class=8, color=1.0, seed=3, repeats=2)
    hue_shifts = []
    for j in range(len(plain)):
        a, b = plain.load(j), tinted.load(j)
        np.testing.assert_array_equal(a.id_map, b.id_map)
        assert a.segments == b.segments
        base = ds.load(j % len(ds))
        top = max(s["id"] for s in base.segments)
        pasted = a.id_map > top  # pixels of the pasted instances
        np.testing.assert_array_equal(a.image[~pasted], b.image[~pasted])
        if pasted.sum() > 20:
            ha = cv2.cvtColor(a.image, cv2.COLOR_RGB2HSV)[pasted]
            hb = cv2.cvtColor(b.image, cv2.COLOR_RGB2HSV)[pasted]
            coloured = ha[:, 1] > 60  # hue is defined where there is saturation
            if coloured.sum() > 20:
                d = (hb[coloured, 0].astype(int) - ha[coloured, 0].astype(int)) % 180
                hue_shifts.append(int(np.median(d)))
    assert len(hue_shifts) >= 4
    assert len(set(hue_shifts)) >= 3  # turned by different angles, not one fixed shift
    gray = np.full((6, 6, 3), 90, np.uint8)  # no hue: only the brightness may change
    out = _recolor(gray, np.random.default_rng(0))
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert 0.7 * 90 - 1 <= int(out[0, 0, 0]) <= 1.3 * 90 + 1


def test_fine_tune_run_with_all_options_keeps_the_frozen_part(
    tiny_cfg, cross_data, tmp_path, monkeypatch
):
    """A 4-iteration fine-tune from an 8-class model with the backbone frozen, distillation and
    copy-paste: the backbone (weights and batch-norm statistics) is unchanged, the distillation
    losses are logged, and a run stopped after iteration 3 resumes to the same weights (the
    teacher is rebuilt from --init, the pastes follow the data position)."""
    base_cfg = apply_overrides(
        tiny_cfg,
        {"input.min_size_train": (64,), "input.crop_size": (64, 64), "input.min_size_test": 64},
    )
    base = build_model(base_cfg.model)
    init = save_checkpoint(tmp_path / "base.safetensors", base, base_cfg, synthetic_meta())
    cfg = apply_overrides(
        base_cfg,
        {
            "solver.batch_size": 2,
            "solver.max_iter": 4,
            "solver.log_period": 1,
            "solver.checkpoint_period": 2,
            "solver.eval_period": 0,
            "solver.num_workers": 0,
            "solver.freeze": "backbone",
            "solver.distill_weight": 1.0,
            "solver.distill_mask_weight": 1.0,
            "input.copy_paste": 1.0,
            "input.copy_paste_from": 8,
            "input.copy_paste_color": 1.0,
        },
    )

    def opts(out, resume=False):
        return TrainOptions(
            train=str(cross_data), out=str(out), init=str(init), progress=False, resume=resume
        )

    train(cfg, opts(tmp_path / "a"))
    final = load_file(tmp_path / "a" / "model_final.safetensors")
    for key, value in base.state_dict().items():
        if key.startswith("backbone."):
            torch.testing.assert_close(final[key], value, rtol=0, atol=0, msg=key)
    w = "predictor.class_embed.weight"
    assert not torch.equal(final[w][:8], base.state_dict()[w][:8])
    log = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert '"loss_distill_ce"' in log and '"loss_distill_mask"' in log

    real_step = Trainer.step

    def interrupted(self, batches, iteration):
        if iteration == 3:  # after the checkpoint at 2 and one more update
            raise KeyboardInterrupt
        return real_step(self, batches, iteration)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, opts(tmp_path / "b"))
    monkeypatch.setattr(Trainer, "step", real_step)
    train(cfg, opts(tmp_path / "b", resume=True))
    resumed = load_file(tmp_path / "b" / "model_final.safetensors")
    assert max(float((resumed[k].double() - final[k].double()).abs().max()) for k in final) <= 1e-6


def test_distillation_needs_init(tiny_cfg, cross_data, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--preset",
            "maskformer_tiny",
            "--model.backbone=test_resnet",
            "--train",
            str(cross_data),
            "--out",
            str(tmp_path / "r"),
            "--iters",
            "1",
            "--batch",
            "2",
            "--no-progress",
            "--solver.distill_weight=1",
        ]
    )
    assert rc == 2 and "distill_weight needs --init" in capsys.readouterr().err
