"""Replay for the fine-tune (``app.replay``, ``app.finetune_job.write_training_set``): which
uncorrected images are replayed, which predicted segments become pseudo-labels, and the training
set the train command reads (corrected images repeated, replayed ones with void elsewhere)."""

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app import transfer
from app.finetune import FinetuneSpec, meta_for, schedule
from app.finetune_job import export_images, train_command, write_training_set
from app.replay import confused_classes, pseudo_label, repeats, replay_images
from app.store import Workspace
from maskformer.data import open_dataset
from maskformer.data.datasets import Sample
from maskformer.data.synthetic import synthetic_meta, write_synthetic_dataset


@dataclass
class _Pan:
    panoptic_seg: torch.Tensor
    segments: list = field(default_factory=list)


class _Scripted:
    """A predictor whose panoptic output is fixed: a left half (score 0.9, circle) and a right
    half (score 0.5, sky)."""

    def predict(self, image: np.ndarray):
        h, w = image.shape[:2]
        seg = torch.zeros(h, w, dtype=torch.int32)
        seg[:, : w // 2], seg[:, w // 2 :] = 5, 9
        segs = [
            {"id": 5, "category_id": 0, "isthing": True, "score": 0.9},
            {"id": 9, "category_id": 5, "isthing": False, "score": 0.5},
        ]
        pan = _Pan(seg, segs)
        return type("P", (), {"panoptic": lambda self: pan})()


def _png(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def ws(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", 5, seed=4, size=32)
    ws = Workspace(tmp_path / "ws")
    transfer.import_source(ws, data)  # 5 corrected images
    for i in range(6):
        ws.add_image(_png(i), f"plain{i}.png")  # 6 nobody corrected
    return ws


def test_replay_images_are_the_uncorrected_ones_in_a_stable_order(ws):
    recs = ws.list_images()
    plain = {r.id for r in recs if r.status != "corrected"}
    ids = replay_images(recs)
    assert set(ids) == plain and len(ids) == 6
    assert replay_images(list(reversed(recs))) == ids  # independent of insertion order
    assert replay_images(recs, limit=2) == ids[:2]
    assert replay_images([r for r in recs if r.status == "corrected"]) == []


def test_pseudo_label_keeps_confident_segments_and_leaves_the_rest_void():
    image = np.zeros((8, 10, 3), np.uint8)
    id_map, segs = pseudo_label(_Scripted(), image, min_score=0.7)
    assert id_map.dtype == np.int32 and id_map.shape == (8, 10)
    assert segs == [{"id": 1, "category_id": 0, "iscrowd": 0, "isthing": True}]
    assert (id_map[:, :5] == 1).all() and (id_map[:, 5:] == 0).all()
    _, both = pseudo_label(_Scripted(), image, min_score=0.5)
    assert [s["category_id"] for s in both] == [0, 5]
    id_map, kept = pseudo_label(_Scripted(), image, min_score=0.5, leave_out=[0])
    assert [s["category_id"] for s in kept] == [5] and (id_map[:, :5] == 0).all()


class _Listing:
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        return self.samples[i]


def _sample(new_on_left: bool) -> Sample:
    """8 x 10 ground truth: the left half is class 8 (new) or 0 (old), the right half sky (5)."""
    id_map = np.ones((8, 10), np.int32)
    id_map[:, 5:] = 2
    left = 8 if new_on_left else 0
    segs = [
        {"id": 1, "category_id": left, "iscrowd": 0, "isthing": True},
        {"id": 2, "category_id": 5, "iscrowd": 0, "isthing": False},
    ]
    return Sample(np.zeros((8, 10, 3), np.uint8), id_map, segs, 0, "x.png")


def test_confused_classes_are_those_the_model_gives_to_new_class_objects():
    # the scripted model calls the left half "circle" (0, score 0.9) in every image; it lies on
    # new-class ground truth in 2 of these 3 images
    ds = _Listing([_sample(True), _sample(False), _sample(True)])
    assert confused_classes(_Scripted(), ds, old_classes=8) == [0]
    assert confused_classes(_Scripted(), ds, old_classes=8, share=0.6) == [0]
    assert confused_classes(_Scripted(), ds, old_classes=8, share=0.7) == []
    ds = _Listing([_sample(False), _sample(False)])  # never on a new class
    assert confused_classes(_Scripted(), ds, old_classes=8) == []


@pytest.mark.parametrize(("corrected", "replayed", "want"), [(16, 100, 6), (16, 0, 1), (0, 5, 5)])
def test_repeats_keep_the_corrected_images_about_half(corrected, replayed, want):
    assert repeats(corrected, replayed) == want


def _spec(ws: Workspace, tmp_path: Path, replay: list[int]) -> FinetuneSpec:
    corrected = [r.id for r in ws.list_images() if r.status == "corrected"]
    cats = ws.ensure_meta(synthetic_meta())
    return FinetuneSpec(
        workspace=str(ws.root),
        job_dir=str(tmp_path / "job"),
        base_checkpoint="b.safetensors",
        base_version=1,
        train_images=corrected,
        heldout_images=[],
        category_ids=cats,
        base_classes=len(cats),
        iters=10,
        batch=2,
        lr=None,
        device="cpu",
        replay_images=replay,
        **schedule(10),
    )


def test_training_set_with_replay(ws, tmp_path):
    spec = _spec(ws, tmp_path, replay_images(ws.list_images()))
    cats = {c.id: c for c in ws.categories()}
    meta = meta_for([cats[i] for i in spec.category_ids])
    corrected = export_images(ws, spec.train_images, spec.category_ids, meta, tmp_path / "corr")
    out = write_training_set(ws, spec, _Scripted(), meta, corrected, tmp_path / "train")
    ds, corr = open_dataset(out), open_dataset(corrected)
    assert ds.meta.class_names == meta.class_names
    assert len(ds) == 6 + repeats(5, 6) * 5  # every replayed image, the corrected ones once
    assert len({ds.load(i).image_id for i in range(len(ds))}) == len(ds)
    replayed = [ds.load(i) for i in range(6)]
    for smp, image_id in zip(replayed, spec.replay_images, strict=True):
        np.testing.assert_array_equal(smp.image, ws.load_image(image_id))
        assert [s["category_id"] for s in smp.segments] == [0]  # the 0.5 sky is left out
        w = smp.id_map.shape[1]
        assert (smp.id_map[:, : w // 2] > 0).all() and (smp.id_map[:, w // 2 :] == 0).all()
    for i in range(5):  # the corrected images, labels as exported
        a, b = ds.load(6 + i), corr.load(i)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.id_map > 0, b.id_map > 0)
        assert sorted(s["category_id"] for s in a.segments) == sorted(
            s["category_id"] for s in b.segments
        )
    assert not (tmp_path / ".train.tmp").exists()


def test_training_set_without_replay_is_the_corrected_export(ws, tmp_path):
    spec = _spec(ws, tmp_path, [])
    cats = {c.id: c for c in ws.categories()}
    meta = meta_for([cats[i] for i in spec.category_ids])
    corrected = export_images(ws, spec.train_images, spec.category_ids, meta, tmp_path / "corr")
    out = write_training_set(ws, spec, None, meta, corrected, tmp_path / "train")
    assert len(open_dataset(out)) == 5
    assert (out / "panoptic.json").read_bytes() == (corrected / "panoptic.json").read_bytes()


def test_copy_paste_takes_the_new_classes(ws, tmp_path):
    spec = _spec(ws, tmp_path, [])
    assert not any(a.startswith("--input.copy_paste") for a in train_command(spec, tmp_path))
    with_new = FinetuneSpec(
        **{**spec.__dict__, "copy_paste": 0.8, "base_classes": len(spec.category_ids) - 1}
    )
    cmd = train_command(with_new, tmp_path)
    assert "--input.copy_paste=0.8" in cmd
    assert f"--input.copy_paste_from={len(spec.category_ids) - 1}" in cmd
    only_old = FinetuneSpec(**{**spec.__dict__, "copy_paste": 0.5})
    assert "--input.copy_paste_from=0" in train_command(only_old, tmp_path)
