"""Native checkpoints: round trip, atomic writes, partial loads for a new K/Q, errors; metadata."""

import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from maskformer.checkpoint import load_checkpoint, load_model, peek_checkpoint, save_checkpoint
from maskformer.config import generic_meta
from maskformer.errors import CheckpointError
from maskformer.metadata import available_metadata, get_metadata, infer_metadata
from maskformer.model import build_model

CLASS_W, CLASS_B = "predictor.class_embed.weight", "predictor.class_embed.bias"
QUERY = "predictor.query_embed.weight"


@pytest.fixture
def saved(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg.model).eval()
    meta = replace(generic_meta(tiny_cfg.model.num_classes, thing_ids=(1, 3)), name="toy")
    path = save_checkpoint(
        tmp_path / "ckpt" / "m.safetensors",
        model,
        tiny_cfg,
        meta,
        extra={"step": 12, "note": "unit test"},
    )
    return path, model, tiny_cfg, meta


def test_round_trip(saved):
    path, model, cfg, meta = saved
    assert os.listdir(path.parent) == ["m.safetensors"]  # no temp file left behind
    ckpt = load_checkpoint(path)
    want = model.state_dict()
    assert ckpt.state_dict.keys() == want.keys()
    assert all(torch.equal(ckpt.state_dict[k], want[k]) for k in want)
    assert ckpt.cfg == cfg and ckpt.meta == meta and ckpt.extra == {"step": 12, "note": "unit test"}
    head = peek_checkpoint(path)
    assert head.state_dict == {} and head.cfg == cfg and head.meta == meta


def test_load_model_gives_the_same_outputs(saved):
    path, model, cfg, meta = saved
    loaded = load_model(path)
    assert loaded.report.complete and not loaded.model.training
    assert loaded.report.loaded == len(model.state_dict())
    assert loaded.cfg == cfg and loaded.meta == meta and loaded.path == path
    assert loaded.extra == {"step": 12, "note": "unit test"}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded.model(x)
    assert torch.equal(a["pred_logits"], b["pred_logits"])
    assert torch.equal(a["pred_masks"], b["pred_masks"])


def test_safetensors_metadata_layout(saved):
    from safetensors import safe_open

    path, _, cfg, meta = saved
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "maskformer-studio" and header["format_version"] == "1"
    assert json.loads(header["config"])["model"]["num_queries"] == cfg.model.num_queries
    assert json.loads(header["meta"])["class_names"] == list(meta.class_names)


def test_shared_and_non_contiguous_tensors(tmp_path, tiny_cfg):
    base = torch.arange(24.0).view(4, 6)
    state = {"a": base, "tied": base, "t": base.t(), "view": base[1:3], "empty": torch.zeros(0)}
    path = save_checkpoint(tmp_path / "s.safetensors", state, tiny_cfg, generic_meta(8))
    out = load_checkpoint(path).state_dict
    assert all(torch.equal(out[k], v) for k, v in state.items())


def test_failed_write_keeps_the_old_file(tmp_path, saved, monkeypatch):
    import safetensors.torch

    path, model, cfg, meta = saved
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, cfg, meta)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["m.safetensors"]


def test_more_classes_and_fewer_queries(saved):
    path, model, cfg, meta = saved
    old = model.state_dict()
    k, q = cfg.model.num_classes, cfg.model.num_queries
    new = load_model(path, num_classes=k + 4, num_queries=q // 2)
    report, sd = new.report, new.model.state_dict()
    assert sorted(report.reinitialised) == sorted([CLASS_W, CLASS_B, QUERY])
    assert report.kept_rows == {QUERY: q // 2, CLASS_W: k, CLASS_B: k}
    assert not report.missing and not report.unexpected
    assert sd[CLASS_W].shape[0] == k + 5
    assert torch.equal(sd[CLASS_W][:k], old[CLASS_W][:k])  # old classes kept
    assert torch.equal(sd[CLASS_W][-1], old[CLASS_W][-1])  # no-object row moved to the new end
    assert torch.equal(sd[CLASS_B][-1], old[CLASS_B][-1])
    assert not torch.equal(sd[CLASS_W][k], old[CLASS_W][-1])  # new rows are fresh
    assert torch.equal(sd[QUERY], old[QUERY][: q // 2])
    assert all(torch.equal(sd[n], old[n]) for n in sd if n not in report.reinitialised)
    assert new.cfg.model.num_classes == k + 4 and new.cfg.model.num_queries == q // 2
    assert new.meta.class_names[:k] == meta.class_names and new.meta.num_classes == k + 4
    out = new.model(torch.randn(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, q // 2, k + 5)


def test_fewer_classes_keeps_no_object_row(saved):
    path, model, _, meta = saved
    old = model.state_dict()
    new = load_model(path, num_classes=3)
    report, sd = new.report, new.model.state_dict()
    assert sorted(report.reinitialised) == [CLASS_B, CLASS_W] and report.kept_rows[CLASS_W] == 3
    assert torch.equal(sd[CLASS_W], torch.cat([old[CLASS_W][:3], old[CLASS_W][-1:]]))
    assert new.meta.class_names == meta.class_names[:3] and new.meta.thing_ids == (1,)


def test_new_metadata_sets_k(saved):
    path = saved[0]
    model = load_model(path, meta=get_metadata("cityscapes_19"))
    assert model.cfg.model.num_classes == 19 and model.meta.name == "cityscapes_19"
    with pytest.raises(CheckpointError, match="19 classes"):
        load_model(path, num_classes=5, meta=get_metadata("cityscapes_19"))


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)


def test_foreign_safetensors_gets_convert_hint(tmp_path):
    hf = tmp_path / "model.safetensors"  # what a Hugging Face folder holds: no metadata of ours
    save_file({"model.weight": torch.zeros(2)}, str(hf), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a MaskFormer Studio .*maskformer convert"):
        load_model(hf)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="Hugging Face model folder.*maskformer convert"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["model_final.pkl", "model_final.pth", "weights.bin"])
def test_pickle_files_get_convert_hint(tmp_path, name):
    path = tmp_path / name
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="maskformer convert"):
        load_model(path)


def test_renamed_torch_file_gets_convert_hint(tmp_path):
    path = tmp_path / "looks_native.safetensors"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="maskformer convert"):
        load_checkpoint(path)


def test_weights_that_do_not_match_own_config(tmp_path, tiny_cfg):
    state = build_model(tiny_cfg.model).state_dict()
    state[CLASS_W] = torch.zeros(4, state[CLASS_W].shape[1])
    path = save_checkpoint(tmp_path / "bad.safetensors", state, tiny_cfg, generic_meta(8))
    with pytest.raises(CheckpointError, match="does not match its own config.*class_embed"):
        load_model(path)
    del state[CLASS_W]
    path = save_checkpoint(tmp_path / "bad2.safetensors", state, tiny_cfg, generic_meta(8))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(path)


def test_bad_header_values(tmp_path, tiny_cfg):
    t = {"a": torch.zeros(1)}
    path = tmp_path / "v.safetensors"
    save_file(t, str(path), metadata={"format": "maskformer-studio", "format_version": "99"})
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(path)
    save_file(
        t,
        str(path),
        metadata={
            "format": "maskformer-studio",
            "format_version": "1",
            "config": "{",
            "meta": "{}",
        },
    )
    with pytest.raises(CheckpointError, match="broken config"):
        load_checkpoint(path)
    save_checkpoint(path, t, tiny_cfg, generic_meta(5))  # config says K=8
    with pytest.raises(CheckpointError, match="5 classes"):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# shipped metadata


@pytest.mark.parametrize(
    "name,k,things",
    [
        ("ade20k_150", 150, 100),
        ("coco_panoptic_133", 133, 80),
        ("coco_stuff_171", 171, 80),
        ("cityscapes_19", 19, 8),
    ],
)
def test_shipped_metadata(name, k, things):
    meta = get_metadata(name)
    assert name in available_metadata() and meta.name == name
    assert meta.num_classes == k and len(meta.thing_ids) == things
    assert len(set(meta.class_names)) == k
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.colors)
    assert infer_metadata(k) == meta
    if meta.dataset_ids:
        assert len(set(meta.dataset_ids)) == k


def test_coco_panoptic_order_and_ids():
    meta = get_metadata("coco_panoptic_133")
    assert meta.thing_ids == tuple(range(80))  # 80 things, then 53 stuff
    assert meta.class_names[0] == "person" and meta.dataset_ids[0] == 1
    assert meta.dataset_ids[79] == 90 and meta.dataset_ids[-1] == 200  # original COCO ids
    city = get_metadata("cityscapes_19")
    assert city.class_names[0] == "road" and city.colors[0] == (128, 64, 128)
    assert infer_metadata(7).class_names[0] == "class_0"
