"""ONNX export: onnxruntime (code we did not write) reproduces PyTorch on the exported graph.

Parity is max |ort - torch| / max |torch| <= 1e-4 on the class logits and on the mask logits, at two
input sizes other than the one the graph was traced at (one export with dynamic height and width),
and the panoptic results computed from both are identical. The tiny model runs in the fast tests;
R50 (FPN and +6 encoder layers), Swin-T and the shipped demo model in the slow ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from maskformer.__main__ import main
from maskformer.checkpoint import load_model, save_checkpoint
from maskformer.config import DatasetMeta, apply_overrides, default_colors, get_preset
from maskformer.deploy import export_onnx, onnx_bytes, onnx_session, read_onnx_metadata
from maskformer.errors import CheckpointError, UserError
from maskformer.inference import Predictor, panoptic_inference
from maskformer.model import build_model

ROOT = Path(__file__).resolve().parents[1]
REL_TOL = 1e-4
# Looser than the presets' 0.8 / 0.8, so random-weight models keep segments to compare.
PANOPTIC = {"object_mask_threshold": 0.5, "overlap_threshold": 0.3}
SIZES = [(96, 128), (160, 96)]  # neither is the traced 128 x 160


def _confident(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights, but class scores peaked enough that panoptic keeps segments."""
    with torch.no_grad():
        model.predictor.class_embed.weight.mul_(10.0)
        model.predictor.class_embed.bias[-1] = -3.0
    return model.eval()


def _meta(k: int) -> DatasetMeta:
    return DatasetMeta(
        class_names=tuple(f"c{i}" for i in range(k)),
        isthing=tuple(i % 2 == 0 for i in range(k)),
        colors=default_colors(k),
        name="toy",
    )


def _rel_err(ref: torch.Tensor, got: np.ndarray) -> float:
    assert tuple(ref.shape) == got.shape, (ref.shape, got.shape)
    return float((ref - torch.from_numpy(got)).abs().max() / ref.abs().max())


def check_parity(model, cfg, meta, sizes=SIZES, seed=0) -> list[tuple[float, float]]:
    """Export once (dynamic size), run both at each size; returns the (class, mask) errors and
    asserts identical panoptic results (printing how many segments they hold)."""
    session = onnx_session(onnx_bytes(model, cfg=cfg, meta=meta))
    gen = torch.Generator().manual_seed(seed)
    errors, kept = [], []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x)
        logits, masks = session.run(None, {"image": x.numpy()})
        errors.append((_rel_err(ref["pred_logits"], logits), _rel_err(ref["pred_masks"], masks)))
        a = _panoptic(ref["pred_logits"][0], ref["pred_masks"][0], meta, cfg)
        b = _panoptic(torch.from_numpy(logits[0]), torch.from_numpy(masks[0]), meta, cfg)
        assert torch.equal(a.panoptic_seg, b.panoptic_seg), (h, w)
        assert _segments(a) == _segments(b)
        kept.append(len(a.segments))
    print(" ".join(f"class {c:.1e} mask {m:.1e}" for c, m in errors), "segments", kept)
    assert sum(kept) > 0  # the panoptic comparison is not vacuous
    assert all(c <= REL_TOL and m <= REL_TOL for c, m in errors), errors
    return errors


def _panoptic(logits, masks, meta, cfg):
    return panoptic_inference(logits, masks, thing_ids=meta.thing_ids, **PANOPTIC)


def _segments(result) -> list[tuple[int, int, int]]:
    return [(s["id"], s["category_id"], s["query"]) for s in result.segments]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A confident random tiny model saved natively, plus its config and metadata."""
    cfg = apply_overrides(
        get_preset("maskformer_tiny"),
        {"model.backbone": "test_resnet", "input.min_size_test": 64, "input.max_size_test": 96},
    )
    torch.manual_seed(0)
    model = _confident(build_model(cfg.model))
    d = tmp_path_factory.mktemp("onnx")
    path = save_checkpoint(d / "tiny.safetensors", model, cfg, _meta(8))
    return d, path, model, cfg, _meta(8)


# --------------------------------------------------------------------------------------------
# the graph


def test_tiny_parity_at_two_sizes_and_panoptic_identical(tiny):
    _, _, model, cfg, meta = tiny
    check_parity(model, cfg, meta)


def test_metadata_and_opset(tiny):
    import onnx

    d, _path, model, cfg, meta = tiny
    out = export_onnx(model, d / "m.onnx", cfg=cfg, meta=meta, extra={"source": "unit"})
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == list(meta.class_names)
    assert json.loads(props["extra"]) == {"source": "unit"}
    got_cfg, got_meta = read_onnx_metadata(onnx_session(out))
    assert got_cfg == cfg and got_meta == meta
    names = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    assert names == (["image"], ["class_logits", "mask_logits"])
    assert not model.training  # export leaves the model as it was


def test_fixed_size_export(tiny):
    _d, _, model, cfg, meta = tiny
    session = onnx_session(onnx_bytes(model, cfg=cfg, meta=meta, height=96, width=128))
    assert session.get_inputs()[0].shape[2:] == [96, 128]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
    logits, masks = session.run(None, {"image": x.numpy()})
    assert _rel_err(ref["pred_logits"], logits) <= REL_TOL
    assert _rel_err(ref["pred_masks"], masks) <= REL_TOL
    with pytest.raises(UserError, match="multiples of 32"):
        onnx_bytes(model, cfg=cfg, meta=meta, height=100, width=128)
    with pytest.raises(UserError, match="both --height and --width"):
        onnx_bytes(model, cfg=cfg, meta=meta, height=96)


# --------------------------------------------------------------------------------------------
# Predictor and predict with the onnxruntime backend


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predictor_backends_agree(tiny):
    _, path, _, _, _ = tiny
    torch_p = Predictor.from_checkpoint(path, device="cpu")
    ort_p = Predictor.from_checkpoint(path, device="cpu", backend="onnxruntime")
    assert ort_p.backend.name == "onnxruntime" and torch_p.backend.name == "torch"
    images = [_image(60, 90, 1), _image(70, 50, 2)]
    for a, b in zip(torch_p.predict_batch(images), ort_p.predict_batch(images), strict=True):
        assert (a.class_logits - b.class_logits).abs().max() <= REL_TOL * a.class_logits.abs().max()
        pa, pb = a.panoptic(*PANOPTIC.values()), b.panoptic(*PANOPTIC.values())
        assert pa.segments and torch.equal(pa.panoptic_seg, pb.panoptic_seg)
        assert _segments(pa) == _segments(pb)
        assert torch.equal(a.semantic(), b.semantic())


def test_predictor_on_an_onnx_file_and_its_errors(tiny, tmp_path):
    _d, _path, model, cfg, meta = tiny
    fixed = export_onnx(model, tmp_path / "fixed.onnx", cfg=cfg, meta=meta, height=64, width=96)
    p = Predictor.from_checkpoint(fixed)
    assert p.model is None and p.meta == meta and p.backend.fixed_size == (64, 96)
    ref = Predictor(model, cfg=cfg, meta=meta, device="cpu")
    img = _image(64, 64, 3)  # padded to the exported 64 x 96 by the Predictor ...
    got = p.predict(img)
    want = ref.predict_batch([img, _image(64, 96, 4)])[0]  # ... as by a 64 x 96 batch partner
    scale = want.class_logits.abs().max()
    assert (got.class_logits - want.class_logits).abs().max() <= REL_TOL * scale
    with pytest.raises(UserError, match="larger than the 64x96"):
        p.predict(_image(96, 64))  # 96 x 64 after resizing: taller than the export
    with pytest.raises(UserError, match="float32 NCHW"):
        Predictor.from_checkpoint(fixed, dtype="bf16")
    with pytest.raises(UserError, match="onnxruntime"):
        Predictor.from_checkpoint(fixed, backend="torch")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        Predictor.from_checkpoint(bad)


def test_foreign_onnx_file_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(CheckpointError, match="not a MaskFormer Studio export"):
        Predictor.from_checkpoint(path)


def test_cli_export_and_predict_with_onnxruntime(tiny, tmp_path, capsys):
    _d, path, _, _, _ = tiny
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(_image(60, 90, 5)).save(imgs / "a.png")
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", str(path), str(out)]) == 0
    said = capsys.readouterr().out
    assert "wrote" in said and "dynamic" in said and "max relative error" in said
    runs = {
        "torch": ["--checkpoint", str(path)],
        "ort": ["--checkpoint", str(path), "--backend", "onnxruntime"],
        "file": ["--checkpoint", str(out)],
    }
    for name, args in runs.items():
        rc = main(["predict", *args, str(imgs), "--out", str(tmp_path / name), "--no-progress"])
        assert rc == 0, name
    ids = {n: np.asarray(Image.open(tmp_path / n / "panoptic" / "a.png")) for n in runs}
    assert ids["torch"].any() and (ids["torch"] == ids["ort"]).all()
    assert (ids["torch"] == ids["file"]).all()
    segments = {
        n: json.loads((tmp_path / n / "panoptic.json").read_text())["annotations"][0] for n in runs
    }
    assert segments["torch"]["segments_info"] == segments["ort"]["segments_info"]


def test_cli_export_errors(tiny, tmp_path, capsys):
    _d, path, _, _, _ = tiny
    assert main(["export-onnx", str(path), str(tmp_path / "m.onnx"), "--height", "100",
                 "--width", "96"]) == 2  # fmt: skip
    assert "multiples of 32" in capsys.readouterr().err
    assert main(["export-onnx", str(tmp_path / "absent.safetensors"), str(tmp_path / "x.onnx")])
    assert "not found" in capsys.readouterr().err


def test_engine_and_app_run_without_onnx(tiny):
    """onnx and onnxruntime are optional: with both blocked the app imports and torch predicts,
    and asking for onnxruntime says how to install it."""
    _, path, _, _, _ = tiny
    code = f"""
import sys
sys.modules["onnx"] = None
sys.modules["onnxruntime"] = None
import app.ui, app.train_tab, app.model_sources
from maskformer.errors import UserError
from maskformer.inference import Predictor
import numpy as np
p = Predictor.from_checkpoint({str(path)!r}, device="cpu")
p.predict(np.zeros((40, 40, 3), np.uint8))
try:
    Predictor.from_checkpoint({str(path)!r}, device="cpu", backend="onnxruntime")
except UserError as e:
    print("refused:", e)
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused:" in r.stdout and "requirements-onnx.txt" in r.stdout


def test_only_deploy_imports_onnx():
    import ast

    for f in [*(ROOT / "maskformer").rglob("*.py"), *(ROOT / "app").rglob("*.py")]:
        if f.parent.name == "deploy":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] in ("onnx", "onnxruntime") for n in names), f


# --------------------------------------------------------------------------------------------
# the real architectures (random weights, full size) and the shipped demo model


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset",
    ["maskformer_r50_ade20k", "maskformer_r50_coco_panoptic", "maskformer_swin_t_ade20k"],
    ids=["r50-fpn", "r50-6enc", "swin-t"],
)
def test_parity_real_architectures(preset):
    cfg = get_preset(preset)
    if preset.endswith("coco_panoptic"):
        assert cfg.model.enc_layers == 6
    torch.manual_seed(0)
    model = _confident(build_model(cfg.model))
    k = cfg.model.num_classes
    check_parity(model, cfg, _meta(k))


@pytest.mark.slow
def test_parity_shipped_demo_model():
    loaded = load_model(ROOT / "checkpoints" / "demo.safetensors")
    assert loaded.cfg.model.masked_attention
    errors = check_parity(loaded.model, loaded.cfg, loaded.meta, sizes=[(128, 128), (96, 160)])
    assert errors
