"""`make browser-test`: run notebooks in JupyterLab, in headless Chromium, as a learner would, and check what shows.

Usage: python tools/browser_test.py [NOTEBOOK ...] [--jobs 2] [--timeout 14400] [--out DIR] [--keep]

NOTEBOOK: a path, or a number or stem of notebooks/ (``00``, ``5``, ``05_pruning``); several may be
given at once as ``00,05``. Default: $NOTEBOOKS (same syntax), else every notebook in notebooks/.

What it does: copies the notebooks into a temporary folder (the committed files are never opened
by JupyterLab), starts JupyterLab from this Python on 127.0.0.1 with a free port and a random token
(its own config, data, settings and workspaces folders), points ``KDCOURSE_RESULTS`` at a temporary
folder, runs the kernels with ``KDCOURSE_PROFILE=fast`` and one torch thread (``KDCOURSE_THREADS``
if set), and drives Chromium through Playwright (``executable_path``; Playwright's own browsers are
never downloaded). For each notebook, ``--jobs`` at a time in separate tabs, each with its kernel:
open it, clear outputs, run all cells, wait for the kernel to go idle, then check that

* no cell shows an error output, and every code cell ran (the cell index is the notebook's, from 0);
* every figure rendered as an image (an ``<img>`` that loaded, or an ``<svg>``);
* every widget rendered (no "Error displaying widget" / "Loading widget..."), and
* moving each slider (a mouse drag on its handle) changes the output it drives.

A screenshot of each notebook goes to ``--out`` (default: a new temporary folder; its path is
printed). Exit status 1 when a check fails, with one line per problem naming notebook and cell.

Chromium: ``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` on the PATH. When it is missing and
this runs as root with apt-get, Debian's ``chromium`` package is installed; otherwise the script
says what to install and exits with status 2.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
WIDGET_PROBLEMS = ("Error displaying widget", "Loading widget...")
LAB_SETTINGS = {  # JupyterLab user settings for the run (a temporary settings folder)
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},  # every cell stays in the page
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}


class ChromiumMissing(RuntimeError):
    """Chromium is not installed and could not be installed here (the message says what to do)."""


@dataclass
class NotebookReport:
    """What one notebook showed: problems (one line each), counts, seconds, screenshots."""
    name: str
    problems: list[str] = field(default_factory=list)
    figures: int = 0
    widgets: int = 0
    sliders: int = 0
    seconds: float = 0.0
    screenshots: list[Path] = field(default_factory=list)

    def line(self) -> str:
        """A one-line summary: status, name, time, what was checked."""
        status = "FAIL" if self.problems else "ok"
        return (f"{status:<5}{self.name:<34}{self.seconds:7.1f} s  {self.figures} figure(s), "
                f"{self.widgets} widget(s), {self.sliders} slider(s) moved")


# ---------------------------------------------------------------- set-up (no browser needed)

# Waits for the page, the kernel and widgets return as soon as the thing is ready; this only ends a
# hang (a busy 2-core laptop can take minutes), so no check depends on speed.
GUARD_S = 900


def select_notebooks(specs: list[str], *, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebook paths from specs: paths, numbers (``5``, ``05``) or stems, comma-separated or not.

    An empty list selects every notebook of `notebook_dir`. Unknown names raise ValueError.
    """
    items = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    available = sorted(notebook_dir.glob("*.ipynb"))
    if not items:
        return available
    chosen = []
    for item in items:
        path = Path(item)
        if path.suffix == ".ipynb":
            if not path.is_file():
                raise ValueError(f"no notebook at {path}")
            chosen.append(path.resolve())
            continue
        prefix = f"{int(item):02d}_" if item.isdigit() else item
        matches = [p for p in available if p.stem == item or p.name.startswith(prefix)]
        if len(matches) != 1:
            names = ", ".join(p.stem for p in available)
            raise ValueError(f"{item!r} matches {len(matches)} notebooks of {notebook_dir} (choose from {names})")
        chosen.append(matches[0])
    return list(dict.fromkeys(chosen))


def find_chromium(env: dict | None = None) -> Path | None:
    """The Chromium executable: $CHROMIUM, else chromium / chromium-browser on the PATH (None if absent)."""
    env = os.environ if env is None else env
    if env.get("CHROMIUM"):
        path = Path(env["CHROMIUM"])
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ValueError(f"CHROMIUM={path} is not an executable file")
        return path
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return Path(found)
    return None


def ensure_chromium(*, env: dict | None = None, is_root: bool | None = None, run=subprocess.run) -> Path:
    """Chromium's path; installs Debian's package with apt-get when missing and root, else ChromiumMissing."""
    env = os.environ if env is None else env
    found = find_chromium(env)
    if found:
        return found
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    apt = shutil.which("apt-get", path=env.get("PATH"))
    if not (is_root and apt):
        raise ChromiumMissing("browser-test needs Chromium, which is not installed. Install Debian's package "
                         "(sudo apt-get install chromium), or your distribution's chromium, or point "
                         "CHROMIUM=/path/to/chromium at one.")
    print("browser-test: Chromium is missing; installing Debian's chromium package with apt-get", flush=True)
    for cmd in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium", "fonts-liberation"]):
        try:
            run(cmd, check=True, env={**env, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.CalledProcessError) as err:
            raise ChromiumMissing(f"'{' '.join(cmd)}' failed ({err}); install Debian's chromium package by hand") from err
    found = find_chromium(env)
    if not found:
        raise ChromiumMissing("apt-get installed chromium, but no chromium executable is on the PATH")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_environment(base: dict, *, results_dir: Path, jupyter_dir: Path) -> dict:
    """Environment of JupyterLab and its kernels: fast profile, one thread, figures to `results_dir`.

    Jupyter's config, data, runtime and IPython folders are fresh ones under `jupyter_dir`, so a
    learner's own settings (a password, another python3 kernel, startup scripts) do not interfere.
    """
    env = {k: v for k, v in base.items() if k != "MPLBACKEND"}  # a learner's kernel draws inline
    env.update(KDCOURSE_PROFILE="fast", KDCOURSE_THREADS=base.get("KDCOURSE_THREADS", "1"),
               KDCOURSE_RESULTS=str(results_dir))
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        (jupyter_dir / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(jupyter_dir / sub)
    return env


def write_lab_settings(settings_dir: Path, settings: dict = LAB_SETTINGS) -> None:
    """Write JupyterLab user settings files (``<plugin>.jupyterlab-settings``) into `settings_dir`."""
    for plugin, values in settings.items():
        package, _, name = plugin.rpartition("/")
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def lab_command(*, port: int, token: str, root_dir: Path, settings_dir: Path, workspaces_dir: Path,
                is_root: bool) -> list[str]:
    """The command line of JupyterLab for the test (this Python; the app exposed as window.jupyterapp)."""
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--expose-app-in-browser", f"--LabApp.user_settings_dir={settings_dir}",
           f"--LabApp.workspaces_dir={workspaces_dir}"]
    return cmd + (["--allow-root"] if is_root else [])


def wait_for_server(url: str, token: str, proc: subprocess.Popen, *, timeout: float = 900.0) -> None:
    """Wait until JupyterLab answers /api/status; RuntimeError when it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


# ---------------------------------------------------------------- in the browser

_JS_READY = """async () => {
  const app = window.jupyterapp; await app.restored;
  const panel = app.shell.currentWidget;
  await panel.context.ready; await panel.sessionContext.ready;
  return panel.context.path;
}"""
_JS_HAS_PANEL = """() => { const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  return !!(w && w.sessionContext && w.content && w.content.widgets); }"""
_JS_KERNEL_IDLE = """() => { const s = window.jupyterapp.shell.currentWidget.sessionContext.session;
  const k = s && s.kernel; return !!k && (k.status === 'idle' || k.status === 'dead'); }"""
_JS_KERNEL_STATUS = """() => { const s = window.jupyterapp.shell.currentWidget.sessionContext.session;
  return s && s.kernel ? s.kernel.status : 'no kernel'; }"""
_JS_RUN_ALL = """async () => {
  const app = window.jupyterapp; window.__kdDone = null;
  await app.commands.execute('notebook:clear-all-cell-outputs');
  app.commands.execute('notebook:run-all-cells').then(
    ok => { window.__kdDone = {ok: ok}; }, err => { window.__kdDone = {error: String(err)}; });
}"""
_JS_CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map((cell, i) => {
  const m = cell.model, node = cell.node;
  if (m.type !== 'code') return {index: i, type: m.type};
  const outs = m.outputs.toJSON();
  const has = (o, mimes) => !!o.data && mimes.some(x => x in o.data);
  const area = node.querySelector('.jp-Cell-outputArea');
  const imgs = [...node.querySelectorAll('.jp-Cell-outputArea img')];
  const prompt = node.querySelector('.jp-InputPrompt');
  return {index: i, type: 'code', source: m.sharedModel.getSource().trim().length > 0,
    count: m.executionCount, prompt: prompt ? prompt.innerText.trim() : '',
    errors: outs.filter(o => o.output_type === 'error').map(o => `${o.ename}: ${o.evalue}`),
    figures: outs.filter(o => has(o, ['image/png', 'image/jpeg', 'image/svg+xml'])).length,
    widgets: outs.filter(o => has(o, ['application/vnd.jupyter.widget-view+json'])).length,
    shown_images: imgs.filter(im => im.complete && im.naturalWidth > 0).length
      + node.querySelectorAll('.jp-Cell-outputArea [data-mime-type="image/svg+xml"] svg').length,
    broken_images: imgs.filter(im => !(im.complete && im.naturalWidth > 0)).length,
    shown_widgets: node.querySelectorAll('.jp-Cell-outputArea .jupyter-widgets').length,
    error_widgets: [...node.querySelectorAll('.jp-Cell-outputArea .jupyter-widgets-error-widget')].map(w => {
      if (w.classList.contains('icon-error') && w.parentElement) w.parentElement.click();  // shows the message
      const lines = (w.innerText || '').split('\\n').map(l => l.trim()).filter(l => l && !l.startsWith('[Open Browser'));
      return lines.length ? lines[0] : ''; }),
    text: area ? area.innerText : ''};
})"""
_JS_MARK_SLIDERS = """() => { const found = [];
  window.jupyterapp.shell.currentWidget.content.widgets.forEach((cell, i) =>
    cell.node.querySelectorAll('.jp-Cell-outputArea .widget-slider').forEach((s, k) => {
      const id = `${i}-${k}`; s.setAttribute('data-kd-slider', id);
      const label = s.querySelector('.widget-label');
      found.push({cell: i, id: id, label: label ? label.innerText.trim() : ''}); }));
  return found; }"""
_JS_SLIDER_STATE = """(id) => { const s = document.querySelector(`[data-kd-slider="${id}"]`);
  const box = s.closest('.widget-interact');
  const target = (box && box.querySelector('.widget-output')) || s.closest('.jp-Cell-outputArea');
  const copy = target.cloneNode(true); copy.querySelectorAll('.widget-slider').forEach(n => n.remove());
  const readout = s.querySelector('.widget-readout');
  return {output: copy.innerHTML, text: copy.innerText, readout: readout ? (readout.value || readout.innerText) : ''}; }"""
_JS_HEIGHT = """() => { const n = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
  || document.querySelector('.jp-NotebookPanel-notebook'); return n ? n.scrollHeight : 0; }"""
_JS_SCROLL = """(y) => { const n = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
  || document.querySelector('.jp-NotebookPanel-notebook'); if (n) n.scrollTop = y; }"""


def cell_problems(name: str, cells: list[dict]) -> list[str]:
    """Problems of one notebook's cells after a run: errors, cells not run, figures and widgets not shown."""
    problems, failed = [], False  # after an error the kernel skips the remaining cells: not a new problem
    for c in cells:
        if c["type"] != "code":
            continue
        where = f"{name}: cell {c['index']}"
        problems += [f"{where}: error output {e}" for e in c["errors"]]
        failed = failed or bool(c["errors"])
        if c["source"] and c["count"] is None and not failed:
            problems.append(f"{where}: was not executed (prompt {c['prompt'] or 'empty'})")
        if c["figures"] and (c["shown_images"] < c["figures"] or c["broken_images"]):
            problems.append(f"{where}: {c['figures']} figure(s) in the outputs, {c['shown_images']} shown as an image")
        for message in c.get("error_widgets", []):
            problems.append(f"{where}: widget not rendered: {message[:200] or 'ipywidgets error widget'}")
        for text in WIDGET_PROBLEMS:
            if text in c["text"]:
                line = next(l for l in c["text"].splitlines() if text in l)
                problems.append(f"{where}: widget not rendered: {line.strip()[:200]}")
        if c["widgets"] and not c["shown_widgets"] and not any(t in c["text"] for t in WIDGET_PROBLEMS) \
                and not c.get("error_widgets"):
            problems.append(f"{where}: {c['widgets']} widget output(s), none rendered")
    return problems


async def _wait(page, js: str, *, timeout_s: float, arg=None) -> bool:
    """True when the JavaScript predicate became true within the timeout, else False."""
    try:
        await page.wait_for_function(js, arg=arg, timeout=timeout_s * 1000, polling=500)
        return True
    except Exception as err:  # playwright's TimeoutError
        if "Timeout" in type(err).__name__ or "Timeout" in str(err):
            return False
        raise


async def move_slider(page, slider: dict, *, name: str, timeout_s: float) -> str | None:
    """Drag one slider's handle across its track; a problem line when its output did not change."""
    where = f"{name}: cell {slider['cell']}: slider {slider['label'] or slider['id']}"
    element = page.locator(f'[data-kd-slider="{slider["id"]}"]')
    await element.scroll_into_view_if_needed()
    before = await page.evaluate(_JS_SLIDER_STATE, slider["id"])
    handle = element.locator(".noUi-handle").first
    track = element.locator(".noUi-target, .noUi-base").first
    hbox, tbox = await handle.bounding_box(), await track.bounding_box()
    if not hbox or not tbox:
        return f"{where}: no visible handle/track to drag"
    x0, y0 = hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2
    x1 = tbox["x"] + tbox["width"] * (0.25 if x0 > tbox["x"] + tbox["width"] / 2 else 0.75)
    await page.mouse.move(x0, y0)
    await page.mouse.down()
    await page.mouse.move(x1, y0, steps=8)
    await page.mouse.up()
    changed = await _wait(page, """([id, old]) => { const s = document.querySelector(`[data-kd-slider="${id}"]`);
        const box = s.closest('.widget-interact');
        const t = (box && box.querySelector('.widget-output')) || s.closest('.jp-Cell-outputArea');
        const c = t.cloneNode(true); c.querySelectorAll('.widget-slider').forEach(n => n.remove());
        return c.innerHTML !== old; }""", arg=[slider["id"], before["output"]], timeout_s=timeout_s)
    await _wait(page, _JS_KERNEL_IDLE, timeout_s=timeout_s)
    after = await page.evaluate(_JS_SLIDER_STATE, slider["id"])
    if "Traceback (most recent call last)" in after["text"]:
        return f"{where}: its output shows an error after moving it: {after['text'].strip().splitlines()[-1][:200]}"
    if not changed or after["output"] == before["output"]:
        moved = f"moved ({before['readout']} -> {after['readout']})" if after["readout"] != before["readout"] \
            else f"did not move (readout {before['readout']})"
        return f"{where}: {moved}, and the output it drives did not change"
    return None


async def screenshots(page, path: Path, *, width: int = 1280, max_height: int = 8000) -> list[Path]:
    """Screenshots of the whole notebook: `path` (and ``-2``, ``-3``... parts when it is very long)."""
    height = await page.evaluate(_JS_HEIGHT)
    parts = min(20, max(1, -(-height // (max_height - 150))))  # equal parts, each under max_height
    step = -(-height // parts)
    await page.set_viewport_size({"width": width, "height": max(900, step + 150)})
    await page.wait_for_timeout(500)
    shots = []
    for part in range(parts):
        await page.evaluate(_JS_SCROLL, part * step)
        await page.wait_for_timeout(200)
        shot = path if part == 0 else path.with_name(f"{path.stem}-{part + 1}{path.suffix}")
        await page.screenshot(path=str(shot))
        shots.append(shot)
    return shots


async def check_notebook(context, *, base_url: str, token: str, rel_path: str, name: str,
                         timeout_s: float, shot_dir: Path) -> NotebookReport:
    """Open one notebook in a new tab, clear outputs, run all, check cells and sliders, screenshot it."""
    report, t0 = NotebookReport(name), time.monotonic()
    page = await context.new_page()
    workspace = "kd-" + "".join(ch if ch.isalnum() else "-" for ch in Path(rel_path).stem)
    try:
        await page.goto(f"{base_url}/lab/workspaces/{workspace}/tree/{quote(rel_path)}?reset&token={token}")
        if not await _wait(page, _JS_HAS_PANEL, timeout_s=GUARD_S):
            report.problems.append(f"{name}: JupyterLab did not open the notebook within {GUARD_S} s")
            return report
        await page.evaluate(_JS_READY)
        await page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # the notebook gets the width
        await _wait(page, _JS_KERNEL_IDLE, timeout_s=GUARD_S)
        await page.evaluate(_JS_RUN_ALL)
        if not await _wait(page, "() => !!window.__kdDone", timeout_s=timeout_s):
            running = [c["index"] for c in await page.evaluate(_JS_CELLS) if c.get("prompt") == "[*]:"]
            report.problems.append(f"{name}: did not finish within {timeout_s:.0f} s (running: cell {running[:1]})")
        await _wait(page, _JS_KERNEL_IDLE, timeout_s=GUARD_S)
        status = await page.evaluate(_JS_KERNEL_STATUS)
        if status != "idle":
            report.problems.append(f"{name}: kernel is {status} after the run")
        # widgets render asynchronously: give "Loading widget..." a moment to turn into the widget
        await _wait(page, """() => !document.querySelector('.jp-NotebookPanel').innerText.includes('Loading widget...')""",
                    timeout_s=GUARD_S)
        cells = await page.evaluate(_JS_CELLS)
        report.figures = sum(c.get("figures", 0) for c in cells)
        report.widgets = sum(c.get("widgets", 0) for c in cells)
        report.problems += cell_problems(name, cells)
        for slider in await page.evaluate(_JS_MARK_SLIDERS):
            problem = await move_slider(page, slider, name=name, timeout_s=GUARD_S)
            report.sliders += problem is None
            if problem:
                report.problems.append(problem)
        report.screenshots = await screenshots(page, shot_dir / f"{Path(name).stem}.png")
    except Exception as err:  # a broken page must not hide the other notebooks' results
        report.problems.append(f"{name}: the browser test itself failed: {type(err).__name__}: {str(err)[:300]}")
    finally:
        report.seconds = time.monotonic() - t0
        try:
            await page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
        except Exception:
            pass  # the server's shutdown stops the kernel anyway
        await page.close()
    return report


async def run_in_browser(jobs: list[tuple[str, str]], *, chromium: Path, base_url: str, token: str,
                         parallel: int, timeout_s: float, shot_dir: Path, is_root: bool) -> list[NotebookReport]:
    """Check each (path in the server's root, display name), `parallel` tabs at a time."""
    from playwright.async_api import async_playwright
    args = ["--disable-dev-shm-usage"] + (["--no-sandbox"] if is_root else [])
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    reports: dict[str, NotebookReport] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=args)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})

        async def worker():
            while not queue.empty():
                rel, name = queue.get_nowait()
                reports[name] = await check_notebook(context, base_url=base_url, token=token, rel_path=rel,
                                                     name=name, timeout_s=timeout_s, shot_dir=shot_dir)
                print(reports[name].line(), flush=True)
                for problem in reports[name].problems:
                    print(f"     {problem}", flush=True)

        await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, len(jobs))))))
        await browser.close()
    return [reports[name] for _, name in jobs]


# ---------------------------------------------------------------- the whole run

def run(paths: list[Path], *, parallel: int = 2, timeout_s: float = 14400.0, shot_dir: Path | None = None,
        keep: bool = False) -> int:
    """Browser-test the notebooks at `paths`; print one line per notebook and problem; 0 when all pass."""
    try:
        chromium = ensure_chromium()
    except (ChromiumMissing, ValueError) as err:
        print(f"browser-test: {err}", file=sys.stderr)
        return 2
    is_root = os.geteuid() == 0
    work = Path(tempfile.mkdtemp(prefix="kdcourse-browser-"))
    shot_dir = Path(shot_dir) if shot_dir else work / "screenshots"
    shot_dir.mkdir(parents=True, exist_ok=True)
    root_dir = work / "notebooks"
    root_dir.mkdir()
    for path in paths:
        shutil.copy2(path, root_dir / path.name)  # JupyterLab only ever sees the copies
    env = kernel_environment(dict(os.environ), results_dir=work / "results", jupyter_dir=work / "jupyter")
    write_lab_settings(work / "settings")
    port, token = free_port(), secrets.token_hex(24)
    base_url = f"http://127.0.0.1:{port}"
    log = open(work / "jupyterlab.log", "w")
    proc = subprocess.Popen(lab_command(port=port, token=token, root_dir=root_dir, settings_dir=work / "settings",
                                        workspaces_dir=work / "workspaces", is_root=is_root),
                            cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"browser-test: {len(paths)} notebook(s), {parallel} at a time, Chromium {chromium}, "
          f"JupyterLab on {base_url} (log {work / 'jupyterlab.log'}); screenshots go to {shot_dir}", flush=True)
    t0 = time.monotonic()
    try:
        try:
            wait_for_server(base_url, token, proc)
        except RuntimeError as err:
            tail = (work / "jupyterlab.log").read_text(errors="replace").splitlines()[-20:]
            print(f"FAILED: {err}; the end of its log:\n" + "\n".join(tail))
            return 1
        jobs = [(p.name, p.name) for p in paths]
        reports = asyncio.run(run_in_browser(jobs, chromium=chromium, base_url=base_url, token=token,
                                             parallel=parallel, timeout_s=timeout_s, shot_dir=shot_dir,
                                             is_root=is_root))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    problems = [p for r in reports for p in r.problems]
    print(f"browser-test: {len(reports)} notebook(s) in {time.monotonic() - t0:.0f} s, {len(problems)} problem(s); "
          f"screenshots in {shot_dir}")
    for problem in problems:
        print(f"FAILED: {problem}")
    if not keep:  # keep the screenshots, and JupyterLab's log when something failed
        for sub in ("notebooks", "results", "jupyter", "settings", "workspaces"):
            shutil.rmtree(work / sub, ignore_errors=True)
        if not problems and work not in shot_dir.parents:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="paths, numbers or stems (default: $NOTEBOOKS, else all)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("BROWSER_JOBS", "2")),
                        help="notebooks run at once, each in its tab with its kernel (default 2)")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("BROWSER_TIMEOUT", "14400")),
                        help="seconds allowed per notebook run (default 14400: catches a hang, not slowness)")
    parser.add_argument("--out", type=Path, default=None, help="screenshot folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary notebooks, figures and logs")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    specs = args.notebooks or [os.environ.get("NOTEBOOKS", "")]
    try:
        paths = select_notebooks(specs)
    except ValueError as err:
        parser.error(str(err))
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("browser-test needs the playwright package: make install (it is in the dev extra)", file=sys.stderr)
        return 2
    return run(paths, parallel=args.jobs, timeout_s=args.timeout, shot_dir=args.out, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
