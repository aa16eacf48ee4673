"""The engine's packages import each other only along the DAG in CONTRIBUTING.md, and never gradio."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> project packages it must not import
FORBIDDEN = {
    "config": {"model", "losses", "data", "training", "inference", "evaluation", "checkpoint"},
    "contracts": {"model", "losses", "data", "training", "inference", "evaluation", "checkpoint"},
    "model": {"losses", "data", "training", "inference", "evaluation", "checkpoint"},
    "losses": {"model", "data", "training", "inference", "evaluation"},
    "inference": {"losses", "training"},
    "data": {"model", "losses", "training"},
    "evaluation": {"training"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _files(pkg: str):
    p = ROOT / "maskformer" / pkg
    return sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_import_dag(pkg):
    for f in _files(pkg):
        if not f.exists():
            continue
        for mod in _imports(f):
            parts = mod.split(".")
            assert parts[0] != "gradio", f"{f.relative_to(ROOT)} imports gradio"
            if parts[0] == "maskformer" and len(parts) > 1:
                assert parts[1] not in FORBIDDEN[pkg], f"{f.relative_to(ROOT)} imports {mod}"


def test_engine_never_imports_gradio_or_app():
    for f in (ROOT / "maskformer").rglob("*.py"):
        for mod in _imports(f):
            assert mod.split(".")[0] not in {"gradio", "app"}, (
                f"{f.relative_to(ROOT)} imports {mod}"
            )


def test_app_does_not_import_training():
    for f in (ROOT / "app").rglob("*.py"):
        for mod in _imports(f):
            assert not mod.startswith("maskformer.training"), f"{f.relative_to(ROOT)} imports {mod}"
