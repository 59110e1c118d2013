"""Invariants of the house (docs/architecture.md): no import cycles, no branch on a method's name outside the
methods' own files, and every document the code cites exists in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from slimvlm.methods import available

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "slimvlm"
#: where a method's name may decide behaviour: the methods' own declarations, and the in-LLM score functions
#: named after the paper that introduced them.
NAMING_ALLOWED = (PACKAGE / "methods", PACKAGE / "inllm" / "scores.py")
#: the word "none" where it is not the method: (file, why).
NONE_ELSEWHERE = {
    "cli.py": "the option parser reads the word none as Python's None",
    "cost.py": "estimate_cost's lm_head='none' omits the LM head",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (module level or inside functions)."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join(stem + ([node.module] if node.module else [])) if node.level else (node.module or "")
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a path), or None; a plain depth-first search."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert sum(map(len, graph.values())) > 50, "the import graph looks empty: the parser is broken"
    assert find_cycle(graph) is None


def _method_literals(node: ast.AST, names: set[str]) -> list[str]:
    """Method names compared against (``==``, ``!=``, ``in``) or used as dict keys in ``node``."""
    hits = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Compare):
            for part in [sub.left, *sub.comparators]:
                consts = part.elts if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [part]
                hits += [c.value for c in consts if isinstance(c, ast.Constant) and c.value in names]
        elif isinstance(sub, ast.Dict):
            hits += [k.value for k in sub.keys if isinstance(k, ast.Constant) and k.value in names]
        elif isinstance(sub, ast.MatchValue) and isinstance(sub.value, ast.Constant) and sub.value.value in names:
            hits.append(sub.value.value)
    return hits


def test_the_name_scanner_sees_branches_and_tables():
    code = 'if m == "fastv": pass\nx = {"aim": 1}\ny = m in ("tome", "other")\n'
    assert sorted(_method_literals(ast.parse(code), {"fastv", "aim", "tome"})) == ["aim", "fastv", "tome"]


def test_nothing_outside_methods_branches_on_a_method_name():
    names = set(available())
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(path == allowed or allowed in path.parents for allowed in NAMING_ALLOWED):
            continue
        here = names - {"none"} if path.name in NONE_ELSEWHERE and path.parent == PACKAGE else names
        for hit in _method_literals(ast.parse(path.read_text()), here):
            offenders.append(f"{path.relative_to(ROOT)}: {hit!r}")
    assert offenders == []


#: a cited document: a path ending in .md (placeholders in capitals, such as OUT.md, are not citations).
_CITATION = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w.-]+\.md)\b")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_cited_document_exists(path):
    cited = {m for m in _CITATION.findall(path.read_text()) if not Path(m).stem.isupper()}
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert missing == [], f"{path.relative_to(ROOT)} cites documents that are not in the repository"
