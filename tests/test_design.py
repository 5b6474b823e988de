"""House rule 1: the library never imports Flower, nor the app layer (server/, clients/);
no import cycles."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "fedrec"


def test_no_flower_import_in_library_source() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+flwr\b", re.MULTILINE)
    offenders = [str(p) for p in LIB.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_importing_every_library_module_does_not_load_flower_or_the_app_layer() -> None:
    # every module but __main__, which runs the CLI when imported
    modules = [".".join(p.relative_to(LIB.parent).with_suffix("").parts) for p in LIB.rglob("*.py") if p.stem != "__main__"]
    app_layer = "sorted(m for m in sys.modules if m.split('.')[0] in ('server', 'clients'))"
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + f"print('flwr' in sys.modules)\nprint({app_layer})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    flower, app = out.stdout.strip().splitlines()
    assert flower == "False"
    assert app == "[]"  # nor server/ or clients/, also not through a lazy import at module level


def test_no_app_layer_import_in_library_source() -> None:
    """fedrec/ depends on neither server/ nor clients/ (engines are found by entry point)."""
    pattern = re.compile(r"^\s*(import|from)\s+(server|clients)\b", re.MULTILINE)
    offenders = [str(p) for p in LIB.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, known: set[str]) -> set[str]:
    """fedrec modules imported at module level (imports inside functions are lazy, by design)."""
    import ast

    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = _module_name(path) if path.stem == "__init__" else _module_name(path).rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.ClassDef) else []:
            if isinstance(sub, ast.Import):
                names = [a.name for a in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - sub.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in sub.names]
            else:
                continue
            found |= {n for n in names if n in known}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge found by a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                path = trail + [node]
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_in_the_library() -> None:
    modules = {_module_name(p): p for p in LIB.rglob("*.py") if p.stem != "__main__"}
    graph = {name: _top_level_imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert sum(map(len, graph.values())) > len(graph)  # the parser sees the library's imports
    assert _cycles(graph) == []
