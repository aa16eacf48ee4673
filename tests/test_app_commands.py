"""``python -m app import|export|predict-all|status``: exit codes, output, one-line errors; and
the engine's command line knows nothing of the app."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.__main__ import main as app_cli
from app.store import Workspace
from app_helpers import ROOT, png_bytes, tiny_checkpoint
from maskformer.__main__ import main as engine_cli


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def folder(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(3):
        (pics / f"{i:06d}.png").write_bytes(png_bytes(16, 20, seed=i))
    return pics


def test_import_export_status(folder, tmp_path, capsys):
    ws_dir = tmp_path / "ws"
    assert app_cli(["import", "--workspace", str(ws_dir), str(folder)]) == 0
    assert "imported 3 new image(s)" in capsys.readouterr().out
    ws = Workspace(ws_dir)
    cat = ws.add_category("thing").id
    a, b, _c = (r.id for r in ws.list_images())
    seg = [{"id": 1, "category_id": cat, "isthing": True}]
    ws.save_annotation(a, np.ones((16, 20), np.int32), seg)
    ws.save_prediction(b, np.ones((16, 20), np.int32), seg, uncertainty=0.7)
    ws.set_review(a, "accepted")

    assert app_cli(["status", "--workspace", str(ws_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 images: 1 unseen · 1 predicted · 1 corrected; reviewed: 1 accepted" in out
    assert f"#{a} 000000.png: accepted at" in out
    assert f"u 0.700  #{b} 000001.png (predicted)" in out

    out_dir = tmp_path / "export"
    args = ["export", "--workspace", str(ws_dir), "--format", "coco-panoptic", "--out"]
    assert app_cli([*args, str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "Exported 1 image(s) (1 corrected)" in text and "1 predicted (not included)" in text
    assert [p.name for p in (out_dir / "images").iterdir()] == ["000000.png"]
    assert app_cli([*args, str(tmp_path / "e2"), "--include", "corrected,predicted"]) == 0
    assert "(1 corrected, 1 predicted)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "e2" / "images").iterdir()) == [
        "000000.png",
        "000001.png",
    ]
    assert (
        app_cli([*args, str(tmp_path / "e3"), "--include-predicted", "--review", "accepted"]) == 0
    )
    assert "Left out 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["import", "--workspace", "{ws}", "{tmp}/missing"], "no such file"),
        (["export", "--workspace", "{tmp}/nope", "--format", "coco-panoptic", "--out", "{tmp}/o"],
         "not a workspace"),
        (["export", "--workspace", "{ws}", "--format", "coco-panoptic", "--out", "{tmp}/o",
          "--include", "unseen"], "unseen images have no annotation"),
        (["export", "--workspace", "{ws}", "--format", "coco-panoptic", "--out", "{tmp}/o",
          "--include", "corrected", "--include-predicted"], "not both"),
        (["export", "--workspace", "{ws}", "--format", "coco-panoptic", "--out", "{tmp}/o"],
         "nothing to export"),
        (["status", "--workspace", "{tmp}/nope"], "not a workspace"),
        (["predict-all", "--workspace", "{tmp}/nope"], "not a workspace"),
        (["predict-all", "--workspace", "{ws}", "--checkpoint", "{tmp}/none.safetensors"],
         "not found"),
        (["predict-all", "--workspace", "{ws}", "--score-threshold", "2"], "must lie in"),
    ],
)  # fmt: skip
def test_errors_are_one_line(argv, match, tmp_path, folder, capsys):
    ws_dir = tmp_path / "ws"
    Workspace(ws_dir).add_image(png_bytes(8, 8), "x.png")
    argv = [a.format(ws=ws_dir, tmp=tmp_path) for a in argv]
    assert app_cli(argv) == 2
    assert match in _error(capsys)


def test_engine_cli_has_no_workspace_commands(capsys):
    for name in ("import", "export"):
        with pytest.raises(SystemExit) as e:
            engine_cli([name, "--workspace", "ws"])
        assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (ROOT / "maskformer" / "commands" / "import_.py").exists()


def test_engine_names_no_app_module():
    """Not even as a string for importlib: the engine has no reference to the app."""
    for f in (ROOT / "maskformer").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                v = node.value
                assert not (v == "app" or v.startswith("app.")), f"{f.relative_to(ROOT)}: {v!r}"


@pytest.mark.slow
def test_predict_all_command(tmp_path, capsys):
    ws_dir = tmp_path / "ws"
    ws = Workspace(ws_dir)
    for i in range(2):
        ws.add_image(png_bytes(24, 32, seed=i), f"{i}.png")
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    argv = ["predict-all", "--workspace", str(ws_dir), "--checkpoint", str(ckpt)]
    assert app_cli(argv) == 0
    captured = capsys.readouterr()
    assert "Predicted 2 of 2 images." in captured.out
    recs = ws.list_images()
    assert [r.status for r in recs] == ["predicted"] * 2 and all(
        r.uncertainty is not None for r in recs
    )
    version = next(v for v in ws.model_versions() if v.path == str(ckpt))
    _, _, source = ws.load_annotation(recs[0].id)
    assert source == "model" and not version.active
    assert app_cli(argv) == 2
    assert "nothing to predict" in _error(capsys)


def test_python_dash_m_app_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "app", "status", "--workspace", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert Path(ROOT / "app" / "commands" / "status.py").exists()
