"""The code keeps its shape: short functions, small classes and modules, and on-host code that
imports only what a host has."""
import ast
import sys
from pathlib import Path

import pytest

from thunderlane import onhost

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "thunderlane").rglob("*.py"), ROOT / "fabfile.py", ROOT / "tasks.py"])
MAX_FUNCTION, MAX_CLASS, MAX_MODULE = 60, 150, 400


def _length(node):
    return node.end_lineno - node.lineno + 1


def oversized(path):
    """(what, name, lines) for every function, class or module over its limit in ``path``."""
    text = path.read_text(encoding="utf-8")
    found = []
    if len(text.splitlines()) > MAX_MODULE:
        found.append(("module", path.name, len(text.splitlines())))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _length(node) > MAX_FUNCTION:
            found.append(("function", node.name, _length(node)))
        elif isinstance(node, ast.ClassDef) and _length(node) > MAX_CLASS:
            found.append(("class", node.name, _length(node)))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_classes_and_modules_stay_small(path):
    assert oversized(path) == []


def test_the_size_check_can_fail(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 60 + "\n")
    assert oversized(long) == [("function", "f", 61)]


def _optional(tree):
    """Import nodes inside ``try: ... except ImportError``: used only when the host has them."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError"
                                             for h in node.handlers):
            found |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return found


def imports(path):
    """Top-level names of every module ``path`` imports (optional ones left out), and its relative
    imports' modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional = _optional(tree)
    absolute, relative = set(), set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            absolute |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            (relative if node.level else absolute).add(node.module.split(".")[0] if node.module else "")
    return absolute, relative


@pytest.mark.parametrize("program,allowed", [
    (onhost.PROBE, set()),
    (("probe_loader",), set()),
    (onhost.PEER_INSTALL, set()),
    # huggingface_hub comes with mlx-lm (which loads through it): the offline snapshot lookup
    (onhost.ENTRY, {"mlx", "mlx_lm", "numpy", "huggingface_hub"}),
    # fab evaluate --on HOST: mlx-lm's load, generation and evaluate; the offline snapshot lookup
    (onhost.EVAL, {"mlx", "mlx_lm", "huggingface_hub"}),
])
def test_onhost_code_imports_only_what_the_host_has(program, allowed):
    """The probe runs with the stdlib alone (it asks huggingface_hub for the cache root only if the
    host has it); the training entry adds mlx, mlx-lm and numpy. A relative import may name only a
    module bundled before it in the same program."""
    for i, name in enumerate(program):
        absolute, relative = imports(onhost.HERE / f"{name}.py")
        foreign = {m for m in absolute if m not in sys.stdlib_module_names} - allowed
        assert not foreign, f"onhost/{name}.py imports {sorted(foreign)}"
        assert relative <= set(program[:i]), f"onhost/{name}.py imports {sorted(relative)} not bundled before it"


def test_the_import_check_can_fail(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import yaml\nfrom .files import x\nif __package__:\n    from .other import y\n"
                 "try:\n    import numpy\nexcept ImportError:\n    pass\n")
    assert imports(f) == ({"yaml"}, {"files", "other"})
