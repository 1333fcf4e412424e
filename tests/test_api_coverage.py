"""Every public name of kdcourse is exercised by a test: a function is called somewhere in tests/,
a class or constant is used. A new public function without a test fails here, naming it."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import kdcourse

TESTS = Path(__file__).resolve().parent


def _public_names() -> dict[str, object]:
    """'module.name' -> object, for every name in the __all__ of every kdcourse module."""
    names = {}
    modules = [kdcourse] + [importlib.import_module(m.name)
                            for m in pkgutil.walk_packages(kdcourse.__path__, "kdcourse.")]
    for mod in modules:
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or name.startswith("__"):
                continue
            names[f"{mod.__name__}.{name}"] = obj
    return names


def _used_in_tests() -> tuple[set[str], set[str]]:
    """(names called in tests/, names referenced at all in tests/), import aliases resolved."""
    called, referenced = set(), set()
    for path in TESTS.glob("*.py"):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text())
        alias = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    alias[a.asname or a.name] = a.name
                    referenced.add(a.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                referenced.add(alias.get(node.id, node.id))
            elif isinstance(node, ast.Attribute):
                referenced.add(node.attr)
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name):
                    called.add(alias.get(f.id, f.id))
                elif isinstance(f, ast.Attribute):
                    called.add(f.attr)
    return called, referenced


def test_every_public_name_is_exercised_by_a_test():
    called, referenced = _used_in_tests()
    missing = []
    for full, obj in _public_names().items():
        name = full.rsplit(".", 1)[1]
        is_function = callable(obj) and not inspect.isclass(obj)
        ok = name in called if is_function else name in referenced
        if not ok:
            missing.append(full)
    assert not missing, f"public names that no test calls (functions) or uses (classes, constants): {sorted(missing)}"


def test_the_coverage_check_can_fail():
    called, _ = _used_in_tests()
    assert "a_function_nobody_wrote" not in called
    assert {"fit", "kd_loss", "record"} <= called
