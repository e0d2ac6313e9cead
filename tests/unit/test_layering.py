"""The shape of the code, as README's layout states it: imports go downward only
(cli → daemon → fs → engine → api → errors/config), the emulator imports nothing of
fs360, and no module of a package imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import fs360

ROOT = Path(fs360.__file__).parent
# Lower layers first; a module may import from its own layer's package and from lower ones.
LAYERS = ["stdlib-only", "errors", "config", "api", "engine", "fs", "web", "daemon", "cli"]
# Modules beside the layers, each in the lowest layer above everything it imports: systemd.py
# and control.py use nothing of fs360, so any layer may use them.
SIDE_MODULES = {"systemd": "stdlib-only", "control": "stdlib-only", "fuse_host": "stdlib-only",
                "thread_names": "stdlib-only",
                "options": "config", "settings_file": "config",
                "doctor": "cli", "demo": "cli", "completion": "cli", "status_view": "cli",
                "notices": "daemon",
                # The WebDAV server is a second adapter over the path model, beside fs/'s FUSE one.
                "webdav": "fs"}


def top_imports(path: Path) -> list[tuple[str, str]]:
    """(the fs360 module or package imported, the import's text) of each import in `path`."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
            else:
                names = [node.module.split(".")] if node.module else []
            for parts in names:
                if parts and parts[0] == "fs360" and len(parts) > 1:
                    found.append((".".join(parts[1:]), ast.unparse(node)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fs360" and len(parts) > 1:
                    found.append((".".join(parts[1:]), ast.unparse(node)))
    return found


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    top = SIDE_MODULES.get(top, top)
    return LAYERS.index(top) if top in LAYERS else None


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts), path


# Apart from the layers: the package's own __init__, and the emulator (a program of its own,
# started by the CLI's `fs360 emulator` and the daemon's embedded one).
APART = {"__init__", "emulator"}
EMULATOR_USERS = {"cli", "daemon"}


def test_imports_go_downward_only():
    """Every module has a place in the layers (a new top-level module must be given one), and none
    imports from a layer above its own; only the CLI and the daemon may use the emulator."""
    unplaced, upward = [], []
    for module, path in modules():
        own = layer_of(module)
        if own is None:
            if module.split(".")[0] not in APART:
                unplaced.append(module)
            continue
        for imported, text in top_imports(path):
            other = layer_of(imported)
            if other is not None and other > own:
                upward.append(f"{module}: {text}")
            elif imported.split(".")[0] == "emulator" and module.split(".")[0] not in EMULATOR_USERS:
                upward.append(f"{module}: {text}")
    assert unplaced == []
    assert upward == []


def test_the_emulator_imports_nothing_of_fs360():
    """The emulator stands alone: it is the server fs360 is tested against."""
    inside = [f"{module}: {text}" for module, path in modules() if module.startswith("emulator")
              for imported, text in top_imports(path) if not imported.startswith("emulator")]
    assert inside == []


def test_no_module_of_a_package_imports_one_that_imports_it_back():
    """No import cycles inside any package (issue 12: the engine's parts once did)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules():
        graph[module] = {imported for imported, _ in top_imports(path)}
    known = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]  # `from .records import X` names records.X
        return name or None

    edges = {m: {r for r in map(resolve, deps) if r and r != m and not r.endswith("__init__")}
             for m, deps in graph.items()}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in edges.get(node, ()):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for module in edges:
        visit(module, [module])
    assert cycles == []
