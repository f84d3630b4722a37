"""The import graph of music_attn reads downhill: each module imports only from layers below
its own (or from its own subpackage), peers never import each other, and there is no cycle.

Built with ``ast`` from the source, imports inside functions included."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "music_attn"

# Layer of each top-level part, bottom first; parts of one layer are peers and may not
# import each other.
LAYERS = {
    "errors": 0, "_threads": 0, "_progress": 0, "_text": 0,   # leaf utilities (_io and _budget raise the errors)
    "_io": 0.5, "_budget": 0.5,
    "music": 1,
    "core": 2,
    "runtime": 3,
    "training": 4, "inspect": 4,
    "interop": 5,
    "bench": 6, "demo": 6,
    "cli": 7,
    "": 8,            # music_attn/__init__.py: re-exports
    "__main__": 9,
}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules):
    """The music_attn modules ``path`` imports (a package counts as its __init__)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        out.update(t for t in targets if t in modules and t != name)
    return out


def _graph():
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, paths) for name, path in paths.items()}


def _part(module):
    """``music_attn.runtime.generate`` -> ``runtime``; ``music_attn`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = _graph()


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m in GRAPH} <= set(LAYERS), sorted({_part(m) for m in GRAPH} - set(LAYERS))


def upward_imports(graph):
    """(module, imported) pairs that import from the module's own layer or above (other part)."""
    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if _part(t) != _part(m) and LAYERS[_part(t)] >= LAYERS[_part(m)])


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def mutual_subpackages(graph):
    edges = {(_part(a), _part(b)) for a, targets in graph.items() for b in targets if _part(a) != _part(b)}
    return sorted((a, b) for a, b in edges if (b, a) in edges and a < b)


def test_a_module_imports_only_from_layers_below_or_its_own_subpackage():
    assert upward_imports(GRAPH) == []


def test_the_import_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None


def test_no_two_subpackages_import_each_other():
    assert mutual_subpackages(GRAPH) == []


def test_the_checks_catch_an_upward_import_a_cycle_and_peers_importing_each_other():
    fake = {"music_attn.music.a": {"music_attn.runtime.b"}, "music_attn.runtime.b": {"music_attn.music.a"},
            "music_attn.training.c": {"music_attn.inspect.d"}, "music_attn.inspect.d": set()}
    assert upward_imports(fake) == [("music_attn.music.a", "music_attn.runtime.b"),
                                    ("music_attn.training.c", "music_attn.inspect.d")]
    assert find_cycle(fake) == ["music_attn.music.a", "music_attn.runtime.b", "music_attn.music.a"]
    assert mutual_subpackages(fake) == [("music", "runtime")]


def test_the_graph_sees_imports_inside_functions():
    """cli/generate.py imports the library only inside its functions."""
    assert "music_attn.runtime.continue_midi" in GRAPH["music_attn.cli.generate"]
