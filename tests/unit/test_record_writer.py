"""The registry is the one writer of record state (issue 23): no FileRecord or SessionRecord
field is set outside fs360/engine/registry*.py. Transfers, the path model and housekeeping
report what happened; the registry's methods apply it and journal it.

A record is recognised without running the code: an attribute set (`x.f = ...`, `x.f += ...`,
`x.f[k] = ...`, `del x.f[k]`, `setattr(x, ...)`) whose name `f` is a record field, on an object
that is not `self`, when either `f` is a field no other class of fs360 has, or `x` (its last
name: `node.record` -> `record`) is a name fs360 annotates somewhere as a record."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import fs360
from fs360.engine.records import FileRecord, SessionRecord

ROOT = Path(fs360.__file__).parent
RECORD_TYPES = {"FileRecord", "SessionRecord"}
FIELDS = {f.name for cls in (FileRecord, SessionRecord) for f in dataclasses.fields(cls)}


def product_modules():
    for path in sorted(ROOT.rglob("*.py")):
        if "emulator" not in path.relative_to(ROOT).parts:
            yield path, ast.parse(path.read_text())


def annotation_names(annotation: ast.expr | None) -> set[str]:
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # "FileRecord | None"
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return set()
    return {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(annotation) if isinstance(n, ast.Attribute)}


def record_names(trees) -> set[str]:
    """Every name fs360 annotates as a record: parameters, variables, dataclass fields."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and annotation_names(node.annotation) & RECORD_TYPES:
                names.add(node.arg)
            elif isinstance(node, ast.AnnAssign) and annotation_names(node.annotation) & RECORD_TYPES:
                target = node.target
                names.add(target.id if isinstance(target, ast.Name) else getattr(target, "attr", ""))
    return names - {"self", ""}


def other_classes_attributes(trees) -> set[str]:
    """Attribute names of fs360's other classes (annotated class fields, `self.x = ...`)."""
    attrs = set()
    for tree in trees:
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name not in RECORD_TYPES):
            for node in ast.walk(cls):
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    attrs.add(node.target.id)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                        and isinstance(node.value, ast.Name) and node.value.id == "self":
                    attrs.add(node.attr)
    return attrs


def last_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def record_writes(tree: ast.AST, shared_fields: set[str], record_identifiers: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each record field set in `tree`."""
    def is_record(obj: ast.expr, attr: str | None) -> bool:
        if last_name(obj) in ("self", "cls"):
            return False
        if attr is not None and attr not in FIELDS:
            return False
        return (attr is not None and attr not in shared_fields) or last_name(obj) in record_identifiers

    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                and node.args and is_record(node.args[0], None):
            found.append((node.lineno, ast.unparse(node)))
        flat = [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
        for target in flat:
            if isinstance(target, ast.Subscript):
                target = target.value
            if isinstance(target, ast.Attribute) and is_record(target.value, target.attr):
                found.append((node.lineno, ast.unparse(target)))
    return sorted(found)


def may_write_records(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    return relative.parts[0] == "engine" and relative.name.startswith("registry")


def scan() -> tuple[set[str], set[str]]:
    trees = [tree for _, tree in product_modules()]
    return FIELDS & other_classes_attributes(trees), record_names(trees)


def test_no_record_field_is_set_outside_the_registry():
    shared, identifiers = scan()
    outside = [f"{path.relative_to(ROOT.parent)}:{line}: {text}"
               for path, tree in product_modules() if not may_write_records(path)
               for line, text in record_writes(tree, shared, identifiers)]
    assert outside == []


def test_the_scan_sees_every_kind_of_record_write():
    """The scan itself: it finds each form on names fs360 uses for records, and leaves other
    objects' attributes of the same name (a tree folder's mtime) alone."""
    shared, identifiers = scan()
    assert {"record", "session"} <= identifiers and "folder" not in identifiers
    assert "mtime_ns" in shared and "needs_resync" not in shared
    source = """
record.state = "uploading"
node.record.ctime_ns = 1
session.names[name] = None
del session.refused_names[name]
rec.server_received += 1
held.needs_resync = True
record.state, record.needs_resync = "failed", True
setattr(record, key, value)
folder.mtime_ns = folder.ctime_ns = 2
self.state = "mine"
handle.closed = True
"""
    found = [text for _, text in record_writes(ast.parse(source), shared, identifiers)]
    assert found == ["record.state", "node.record.ctime_ns", "session.names", "session.refused_names",
                     "rec.server_received", "held.needs_resync", "record.needs_resync", "record.state",
                     "setattr(record, key, value)"]
