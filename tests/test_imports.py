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
    "checkpoint": {"losses", "data", "training", "inference", "evaluation", "deploy"},
    "partial_load": {"losses", "data", "training", "inference", "evaluation", "deploy"},
    "sources": {"model", "losses", "data", "training", "inference", "evaluation", "deploy"},
    "converters": {"losses", "data", "training", "inference", "evaluation", "deploy"},
    "deploy": {"losses", "data", "training", "evaluation"},
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


# ---------------------------------------------------------------------------------------------
# No import cycles in the engine, counting the imports made inside functions too: a local import
# that closes a cycle only hides it (it breaks the day someone moves it to the top).


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


ENGINE = {_module_name(f): f for f in (ROOT / "maskformer").rglob("*.py")}


def _engine_imports(path: Path, name: str) -> set[str]:
    """The engine modules ``path`` imports anywhere in it (``from a import b``: a.b if a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in ENGINE}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                target = f"{base}.{a.name}"
                if target in ENGINE:
                    out.add(target)
                elif base in ENGINE:
                    out.add(base)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_engine_imports_have_no_cycle():
    graph = {name: _engine_imports(f, name) - {name} for name, f in ENGINE.items()}
    assert graph["maskformer.data.datasets"] >= {
        "maskformer.data.instances_dataset",
        "maskformer.data.panoptic_dataset",
        "maskformer.data.semantic_dataset",
    }, "open_dataset imports the three formats"
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
