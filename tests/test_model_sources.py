"""Any checkpoint in one flag: Hugging Face folders, hub ids (from a hub cache laid out as
``huggingface_hub`` lays it out), official .pkl files; converted once and cached; the app loads them.

Every HF model here is a random-weight ``MaskFormerForInstanceSegmentation`` saved by transformers
itself (code we did not write), and our converted model must reproduce its logits. No network: the
hub tests read a cache the test builds, or talk to a closed port on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from maskformer.__main__ import main
from maskformer.checkpoint import load_model, peek_checkpoint
from maskformer.converters.hf import config_from_hf
from maskformer.errors import CheckpointError
from maskformer.metadata import get_metadata
from maskformer.sources import resolve_checkpoint, source_kind

ROOT = Path(__file__).resolve().parents[1]
REPO = "acme/maskformer-tiny-ade"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _random_hf(folder: Path, id2label: dict[int, str] | None) -> torch.nn.Module:
    """A small random HF MaskFormer (Swin backbone) saved with ``save_pretrained``."""
    from transformers import (
        DetrConfig,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        MaskFormerSwinConfig,
    )

    bb = MaskFormerSwinConfig(
        embed_dim=32,
        depths=[1, 1, 2, 1],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    dec = DetrConfig(
        d_model=64,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        num_queries=10,
        encoder_layers=0,
    )
    kw = {} if id2label is None else {"id2label": id2label}
    cfg = MaskFormerConfig(
        backbone_config=bb, decoder_config=dec, fpn_feature_size=64, mask_feature_size=64, **kw
    )
    torch.manual_seed(0)
    model = MaskFormerForInstanceSegmentation(cfg).eval()
    model.save_pretrained(folder)
    return model


def _same_logits(hf_model, path: Path) -> None:
    loaded = load_model(path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref, got = hf_model(pixel_values=x), loaded.model(x)
    torch.testing.assert_close(got["pred_logits"], ref.class_queries_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got["pred_masks"], ref.masks_queries_logits, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def ade_hf(tmp_path_factory):
    """An HF folder whose id2label holds ADE20K's 150 names (so the shipped metadata is used)."""
    folder = tmp_path_factory.mktemp("hf") / "maskformer-tiny-ade"
    names = get_metadata("ade20k_150").class_names
    return folder, _random_hf(folder, dict(enumerate(names)))


def make_hub_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """``folder``'s files as huggingface_hub caches a repository: content-addressed blobs,
    a snapshot of relative symlinks per commit, and ``refs/main`` naming the commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / digest).write_bytes(data)
        os.symlink(Path("..") / ".." / "blobs" / digest, snap / f.name)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("MASKFORMER_CACHE", str(tmp_path / "converted"))
    return cache


# --------------------------------------------------------------------------------------------
# kinds, conversion, cache


def test_source_kinds(ade_hf, tmp_path):
    folder, _ = ade_hf
    assert source_kind(folder) == "hf-folder"
    assert source_kind(folder / "model.safetensors") == "hf-folder"
    assert source_kind(REPO) == "hub" and source_kind(REPO + "@v1.0") == "hub"
    (tmp_path / "m.pkl").write_bytes(b"x")
    assert source_kind(tmp_path / "m.pkl") == "official"
    for missing in ("no/such/dir/model.safetensors", "./absent", "../x/y", "a/b/c"):
        with pytest.raises(CheckpointError, match="not found"):
            source_kind(missing)
    with pytest.raises(CheckpointError, match="without config.json"):
        source_kind(tmp_path)


def test_hf_folder_is_converted_once_and_cached(ade_hf, tmp_path):
    folder, hf_model = ade_hf
    first = resolve_checkpoint(folder, cache_dir=tmp_path)
    assert first.converted and first.kind == "hf-folder" and first.path.parent == tmp_path
    mtime = first.path.stat().st_mtime_ns
    again = resolve_checkpoint(folder / "model.safetensors", cache_dir=tmp_path)
    assert not again.converted and again.path == first.path
    assert first.path.stat().st_mtime_ns == mtime and len(list(tmp_path.iterdir())) == 1
    head = peek_checkpoint(first.path)
    assert head.meta.name == "ade20k_150"  # thing/stuff flags from the shipped metadata
    assert head.extra["converted_from"] == str(folder)
    _same_logits(hf_model, first.path)


def test_hub_id_from_the_hub_cache_offline(ade_hf, hub_env):
    folder, hf_model = ade_hf
    make_hub_cache(hub_env, REPO, folder)
    got = resolve_checkpoint(REPO)
    assert got.kind == "hub" and got.converted and got.describe() == f"{REPO} (hub)"
    assert got.path.parent == Path(os.environ["MASKFORMER_CACHE"])
    assert peek_checkpoint(got.path).extra["converted_from"] == REPO
    assert resolve_checkpoint(f"{REPO}@{COMMIT}").path == got.path  # same content, same file
    _same_logits(hf_model, got.path)


def test_hub_id_missing_offline_is_one_clear_line(hub_env):
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("acme/not-cached")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE=1" in msg and str(hub_env) in msg and "\n" not in msg


def test_hub_id_online_without_network(tmp_path):
    """Online mode, the hub unreachable (a closed port on this machine): one line naming the
    cache and HF_HUB_OFFLINE."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    code = "from maskformer.__main__ import main; raise SystemExit(main(['export-onnx', "
    code += f"'{REPO}', '{tmp_path / 'x.onnx'}']))"
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download") and "HF_HUB_OFFLINE=1" in last
    assert str(tmp_path / "cache") in last


def test_official_pkl_is_converted_once(tmp_path):
    from maskformer.model import build_model
    from test_official_convert import _tiny_r18, to_official, write_pkl

    cfg = _tiny_r18()
    model = build_model(cfg.model).eval()
    src = write_pkl(tmp_path / "model_final.pkl", to_official(model.state_dict()))
    got = resolve_checkpoint(src, cache_dir=tmp_path / "cache")
    assert got.kind == "official" and got.converted and got.path.name.startswith("model_final-")
    assert not resolve_checkpoint(src, cache_dir=tmp_path / "cache").converted
    loaded = load_model(got.path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x)["pred_masks"], model(x)["pred_masks"])


# --------------------------------------------------------------------------------------------
# the converter bug: no id2label in config.json


def test_default_two_labels_are_left_out_of_config_json(tmp_path):
    """transformers writes no id2label for its default 2-label map and reads the folder back with
    2 classes; so do we (names from HF's defaults), weights and all."""
    folder = tmp_path / "two"
    hf_model = _random_hf(folder, None)
    assert "id2label" not in json.loads((folder / "config.json").read_text())
    assert transformers.MaskFormerConfig.from_pretrained(folder).num_labels == 2
    got = resolve_checkpoint(folder, cache_dir=tmp_path / "cache")
    head = peek_checkpoint(got.path)
    assert head.cfg.model.num_classes == 2 and head.meta.class_names == ("LABEL_0", "LABEL_1")
    _same_logits(hf_model, got.path)


def test_hf_default_config_reads_with_two_classes(tmp_path):
    transformers.MaskFormerConfig().save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "id2label" not in raw
    cfg, meta = config_from_hf(raw)
    assert cfg.model.num_classes == 2 and meta.class_names == ("LABEL_0", "LABEL_1")
    assert cfg.model.backbone == "swin" and cfg.model.swin_embed_dim == 128  # HF's Swin-B default
    cfg, meta = config_from_hf(raw, num_classes=5)  # K from the weights when they are at hand
    assert meta.class_names[-1] == "LABEL_4"
    with pytest.raises(CheckpointError, match="names 2 classes but its class predictor has 5"):
        config_from_hf({**raw, "id2label": {"0": "a", "1": "b"}}, num_classes=5)


# --------------------------------------------------------------------------------------------
# the commands


def test_predict_and_train_init_take_a_hub_id(ade_hf, hub_env, tmp_path, capsys):
    from maskformer.data.synthetic import write_synthetic_dataset

    folder, _ = ade_hf
    make_hub_cache(hub_env, REPO, folder)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)).save(img)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", REPO, str(img), "--out", str(out), "--no-progress",
                 "--task", "semantic"]) == 0  # fmt: skip
    assert (out / "semantic" / "a.png").is_file()
    data = write_synthetic_dataset(tmp_path / "data", 2, seed=0, size=64)
    rc = main(["train", "--init", REPO, "--train", str(data), "--out", str(tmp_path / "run"),
               "--iters", "0", "--no-progress"])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    assert "re-initialised" in captured.err  # 150 classes -> the synthetic set's: said
    final = captured.out.strip().splitlines()[-1]
    assert peek_checkpoint(final).cfg.model.backbone == "swin"


# --------------------------------------------------------------------------------------------
# the app


def test_app_loads_a_hub_model_as_a_version(ade_hf, hub_env, tmp_path):
    from app import model_sources as ms
    from app.callbacks import make_context
    from app.store import Workspace
    from app.versions import ModelSwitcher, version_rows
    from app_helpers import tiny_checkpoint
    from maskformer.inference import Predictor

    folder, _ = ade_hf
    make_hub_cache(hub_env, REPO, folder)
    ck = tiny_checkpoint(tmp_path / "base.safetensors")
    ws = Workspace(tmp_path / "ws")
    ctx = make_context(Predictor.from_checkpoint(ck, device="cpu"), ws, checkpoint=ck)
    assert "8 classes" in ms.model_line(ctx) or "classes" in ms.model_line(ctx)
    steps = []
    v = ms.load_into_app(ctx, ModelSwitcher(ctx, "cpu"), REPO, lambda f, m: steps.append((f, m)))
    assert v.active and ctx.model_version_id == v.id and ctx.meta.num_classes == 150
    assert Path(v.path).parent == ms.converted_dir(ws)  # the workspace keeps its own copy
    assert steps and all(0.0 <= f <= 1.0 for f, _ in steps)
    assert version_rows(ws)[0][1] == f"{REPO} (hub)"  # the row names its source
    line = ms.model_line(ctx)
    assert f"v{v.id}" in line and REPO in line and "ADE20K, 150 classes" in line
    again = ms.load_into_app(ctx, ModelSwitcher(ctx, "cpu"), REPO)  # converted once: same version
    assert again.id == v.id and len(ws.model_versions()) == 2
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        ms.load_into_app(ctx, ModelSwitcher(ctx, "cpu"), "acme/absent")
    assert ctx.model_version_id == v.id  # a failed load leaves the app's model as it was


@pytest.mark.slow
def test_launch_and_the_train_tab_take_any_checkpoint(ade_hf, tmp_path):
    """``launch.py --checkpoint HF_FOLDER`` serves the converted model (kept in the workspace);
    the Train tab's "Load a model" (its API) switches to another checkpoint and names it."""
    from gradio_client import Client

    from app.store import Workspace
    from app_helpers import AppServer, tiny_checkpoint

    folder, _ = ade_hf
    ws_dir = tmp_path / "ws"
    server = AppServer(folder, ws_dir, tmp_path / "server.log").wait()
    try:
        ws = Workspace(ws_dir)
        (active,) = [v for v in ws.model_versions() if v.active]
        assert active.metrics["source"] == f"{folder} (Hugging Face folder)"
        assert Path(active.path).parent == ws_dir / "models" / "converted"
        tiny = tiny_checkpoint(tmp_path / "tiny.safetensors")
        client = Client(server.url, verbose=False)
        said, table, *_, line = client.predict(str(tiny), api_name="/load_model_source")
        assert "The app now uses **v2** (tiny.safetensors)" in said
        assert "v2" in line and "8 classes" in line
        rows = table["data"] if isinstance(table, dict) else table
        assert [r[1] for r in rows] == ["tiny.safetensors", f"{folder} (Hugging Face folder)"]
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert f"model {folder} (Hugging Face folder)" in log
