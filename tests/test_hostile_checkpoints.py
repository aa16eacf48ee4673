"""Hostile checkpoints: every file a user (or an attacker) can hand to --checkpoint / --init.

Each is refused with one clear line (``CheckpointError``, exit 2 from the CLI), runs no code from the
file, allocates nothing the file only claims, and leaves nothing behind; tensors that do not fit are
always named. Grow this file with every new kind of bad checkpoint.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maskformer.__main__ import main
from maskformer.checkpoint import load_model, save_checkpoint, verify_checkpoint
from maskformer.config import apply_overrides, config_to_dict, generic_meta, get_preset
from maskformer.data.synthetic import write_synthetic_dataset
from maskformer.errors import CheckpointError
from maskformer.model import build_model
from maskformer.sources import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = apply_overrides(get_preset("maskformer_tiny"), {"model.backbone": "test_resnet"})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    d = tmp_path_factory.mktemp("hostile")
    return d, save_checkpoint(d / "good.safetensors", model, cfg, generic_meta(8)), model, cfg


def _claiming(path: Path, model, cfg, **model_fields) -> Path:
    """A native file with the real tensors but a config claiming other sizes."""
    lie = replace(cfg, model=replace(cfg.model, **model_fields))
    meta = generic_meta(lie.model.num_classes)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    header = {
        "format": "maskformer-studio",
        "format_version": "1",
        "config": json.dumps(config_to_dict(lie)),
        "meta": json.dumps(meta.to_dict()),
        "extra": "{}",
    }
    save_file(state, str(path), metadata=header)
    return path


# --------------------------------------------------------------------------------------------
# wrong kind of file


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.safetensors", b""),
        ("image.safetensors", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
        ("text.safetensors", b"hello, I am a checkpoint"),
        ("json.safetensors", b'{"format": "maskformer-studio"}'),
        ("huge_header.safetensors", (1 << 60).to_bytes(8, "little") + b"{}"),
        ("zip.pth", b"PK\x03\x04" + b"\0" * 60),
        ("random.pkl", bytes(range(256)) * 2),
    ],
)
def test_wrong_kind_of_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(resolve_checkpoint(path, cache_dir=tmp_path / "cache").path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_truncated_safetensors(tiny, tmp_path):
    _, good, _, _ = tiny
    data = good.read_bytes()
    for cut in (8, len(data) // 3, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a readable safetensors"):
            load_model(bad)


def test_deeply_nested_metadata(tiny, tmp_path):
    _, _, _model, _cfg = tiny
    path = tmp_path / "nested.safetensors"
    deep = "[" * 200_000 + "]" * 200_000
    header = {"format": "maskformer-studio", "format_version": "1", "config": deep, "meta": "{}"}
    save_file({"a": torch.zeros(1)}, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="broken config"):
        load_model(path)


def test_cli_says_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    (tmp_path / "img.png").write_bytes(b"x")
    assert main(["predict", "--checkpoint", str(bad), str(tmp_path / "img.png"), "--out",
                 str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# --------------------------------------------------------------------------------------------
# pickles that run code


class _Boom:
    """Unpickling this runs ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["model_final.pkl", "model_final.pth", "legacy.pth"])
def test_pickles_with_code_are_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    payload = {"model": {"w": _Boom(marker)}}
    if name == "model_final.pkl":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=name != "legacy.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        resolve_checkpoint(path, cache_dir=tmp_path / "cache")
    assert not marker.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_hf_folder_with_a_code_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "maskformer"}))
    torch.save({"class_predictor.weight": _Boom(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        resolve_checkpoint(folder, cache_dir=tmp_path / "cache")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# absurd sizes: refused before anything is allocated


def test_absurd_sizes_are_refused_before_allocating(tiny, tmp_path):
    """Metadata claiming 10^8 queries (25 GB of embeddings at this width), a 10^8-wide feed-forward
    layer or 10^7 decoder layers is refused in a process that cannot map even 4 GB more than it
    has: nothing was allocated (or built) for it."""
    _, _, model, cfg = tiny
    queries = _claiming(tmp_path / "queries.safetensors", model, cfg, num_queries=100_000_000)
    wide = _claiming(tmp_path / "wide.safetensors", model, cfg, dim_feedforward=100_000_000)
    deep = _claiming(tmp_path / "deep.safetensors", model, cfg, dec_layers=10_000_000)
    code = f"""
import resource, sys
from maskformer.checkpoint import load_model, verify_checkpoint
from maskformer.errors import CheckpointError
import torch
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
now = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (now + (4 << 30), hard))
for path in {[str(queries), str(wide), str(deep)]!r}:
    for fn in (load_model, verify_checkpoint):
        try:
            fn(path)
        except CheckpointError as e:
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
    lines = r.stdout.splitlines()
    assert len(lines) == 6 and all("does not match its own config" in s for s in lines), lines
    assert "Q=100000000" in lines[0] and "[100000000, 64]" in lines[2]
    assert "claims 10000000 transformer layers" in lines[4]


def test_train_init_with_absurd_sizes_exits_2(tiny, tmp_path, capsys):
    _, _, model, cfg = tiny
    lie = _claiming(tmp_path / "lie.safetensors", model, cfg, num_queries=10_000_000)
    data = write_synthetic_dataset(tmp_path / "data", 2, seed=0, size=64)
    rc = main(["train", "--init", str(lie), "--train", str(data), "--out", str(tmp_path / "run"),
               "--iters", "0", "--no-progress"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not match its own config" in err and "Q=10000000" in err


def test_asked_sizes_are_bounded(tiny):
    _, good, _, _ = tiny
    with pytest.raises(CheckpointError, match="num_queries=10000000 is outside"):
        load_model(good, num_queries=10_000_000)


# --------------------------------------------------------------------------------------------
# wrong shapes


def test_wrong_shapes_in_a_native_file(tiny, tmp_path):
    _, _, model, cfg = tiny
    state = model.state_dict()
    state["pixel_decoder.mask_features.weight"] = torch.zeros(3, 3, 1, 1)
    path = save_checkpoint(tmp_path / "shapes.safetensors", state, cfg, generic_meta(8))
    with pytest.raises(CheckpointError, match=r"mask_features.weight \[3, 3, 1, 1\] vs \[64, 64"):
        verify_checkpoint(path)


def test_train_init_names_reinitialised_tensors(tiny, tmp_path, capsys):
    """--init from another architecture with --preset: the tensors that do not fit are listed,
    with their shapes, even with --no-progress; a file that shares nothing is refused."""
    _, _good, _, cfg = tiny
    data = write_synthetic_dataset(tmp_path / "data", 2, seed=0, size=64)
    wider = save_checkpoint(
        tmp_path / "wider.safetensors",
        build_model(replace(cfg.model, conv_dim=32, mask_dim=32)),
        replace(cfg, model=replace(cfg.model, conv_dim=32, mask_dim=32)),
        generic_meta(8),
    )
    args = ["--train", str(data), "--iters", "0", "--no-progress", "--preset", "maskformer_tiny",
            "--model.backbone", "test_resnet"]  # fmt: skip
    assert main(["train", "--init", str(wider), "--out", str(tmp_path / "a"), *args]) == 0
    err = capsys.readouterr().err
    assert "warning: initialised from" in err and "re-initialised (shapes differ:" in err
    assert "pixel_decoder" in err and "[32, " in err
    other = save_checkpoint(
        tmp_path / "other.safetensors", {"x": torch.zeros(2)}, cfg, generic_meta(8)
    )
    rc = main(["train", "--init", str(other), "--out", str(tmp_path / "b"), *args])
    assert rc == 2 and "does not match its own config" in capsys.readouterr().err
