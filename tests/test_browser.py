"""The lesson notebooks as a learner meets them: JupyterLab in a real browser.

nbval runs notebooks headless, so it never sees a widget. Here JupyterLab runs on a free loopback
port with LABKIT_HEADLESS=0 (panels are real widgets) and LABKIT_PROFILE=ci (short runs), and
Debian's Chromium, driven by Playwright, does what a learner does with each lesson notebook:

1. Run All (the last cell, cleanup, stops the servers);
2. move one slider of the first panel and press Run: the panel must say to run the Setup cell
   again (not a bare ConnectionRefusedError);
3. run the Setup cell again, press Run, wait: the panel's table must show the new value, its plots
   must be rendered images (naturalWidth > 0), with no Python repr, no traceback, no "Loading
   widget" and no "Error displaying widget";
4. save: the saved file holds no widget views (no "model not found" on reopening).

Screenshots of each step land in the test's output directory (``LABKIT_BROWSER_SHOTS`` or pytest's
tmp_path), to look at. A new lesson adds itself with one line in LESSONS.

Playwright downloads no browser here: it drives the system Chromium (``apt-get install chromium``)
through ``executable_path``. Without Chromium or Playwright the test skips, saying what to install,
unless LABKIT_REQUIRE_BROWSER=1 (set by .ci/run), where it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Lesson:
    notebook: str  # file in notebooks/
    slider: str  # the first panel's control to move (its label)
    value: float  # the value to set it to (not its default)
    column: str  # the column of the panel's table that must show that value in every row


LESSONS = [
    Lesson("00-setup.ipynb", slider="repeats", value=12, column="round trips"),
    Lesson("09-caching.ipynb", slider="cache_mb", value=4, column="cache MB"),
    Lesson("10-thundering-herd.ipynb", slider="readers", value=8, column="readers"),
]

RUN_ALL_TIMEOUT = 600  # s, one notebook's Run All in the CI profile (a loaded machine included)
PANEL_RUN_TIMEOUT = 300  # s, one panel run
BAD_TEXT = [
    "Traceback",
    "Loading widget",
    "Error displaying widget",
    "model not found",
    "object at 0x",
    "<Figure size",
    "RunResult(",
    "HerdResult(",
]


def _need_browser() -> str:
    required = os.environ.get("LABKIT_REQUIRE_BROWSER") == "1"
    exe = os.environ.get("LABKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "Playwright for Python is not installed: pip install playwright (no browser download needed)"
    if why is None and exe is None:
        why = "no Chromium found: apt-get install chromium (or set LABKIT_CHROMIUM to a Chromium binary)"
    if why is None:
        try:
            import jupyterlab  # noqa: F401
        except ImportError:
            why = "JupyterLab is not installed: pip install -e '.[lab]'"
    if why:
        if required:
            pytest.fail(f"browser test required (LABKIT_REQUIRE_BROWSER=1) but {why}")
        pytest.skip(f"browser test skipped: {why}")
    return exe  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free loopback port over a copy of notebooks/ (Run All must not touch the repo)."""
    exe = _need_browser()
    root = tmp_path_factory.mktemp("lab")
    nbdir = root / "notebooks"
    shutil.copytree(REPO / "notebooks", nbdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = root / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # every cell stays in the page (no virtual scrolling), so the test can find any panel
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    notes = root / "settings" / "@jupyterlab" / "apputils-extension"
    notes.mkdir(parents=True)
    (notes / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))  # no news toast
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "JPY_SESSION_NAME")}
    env.update(
        LABKIT_HEADLESS="0",
        LABKIT_PROFILE="ci",
        JUPYTERLAB_SETTINGS_DIR=str(root / "settings"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        IPYTHONDIR=str(root / "ipython"),
        JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    log = open(root / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={nbdir}",
            "--LabApp.expose_app_in_browser=True",
            "--allow-root",
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
            "--ContentsManager.pre_save_hook=labkit.ui.jupyter.strip_widget_views",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=nbdir,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start: " + (root / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.5)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    try:
        yield {"base": base, "token": token, "browser": browser, "nbdir": nbdir, "root": root}
    finally:
        browser.close()
        pw.stop()
        proc.terminate()  # stops its kernels too (their servers were closed by each test's cleanup cell)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# JavaScript helpers, run in the page (window.jupyterapp: --LabApp.expose_app_in_browser)
_NB = "window.jupyterapp.shell.currentWidget"
_KERNEL_IDLE = (
    f"() => {{ const w = {_NB}; const k = w && w.sessionContext && w.sessionContext.session "
    "&& w.sessionContext.session.kernel; return !!k && k.status === 'idle'; }"
)
_CELLS = f"""() => {{
  const cells = {_NB}.content.widgets.filter(c => c.model.type === 'code');
  return cells.map(c => ({{
    count: c.model.executionCount,
    source: c.model.sharedModel.getSource(),
    error: (c.model.outputs.toJSON() || []).filter(o => o.output_type === 'error')
             .map(o => o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n')).join('\\n')
  }}));
}}"""


def _cells(page):
    return page.evaluate(_CELLS)


def _wait_cells_ran(page, indices: list[int] | None, timeout: float, before: dict[int, int] | None = None):
    """Wait until the given code cells (all when None) have run and the kernel is idle; fail on an error."""
    deadline = time.monotonic() + timeout
    while True:
        cells = _cells(page)
        for i, c in enumerate(cells):
            if c["error"]:
                raise AssertionError(f"code cell {i} failed in JupyterLab:\n{_strip_ansi(c['error'])[-3000:]}")
        want = range(len(cells)) if indices is None else indices
        done = all(
            cells[i]["count"] is not None and (before is None or cells[i]["count"] != before.get(i)) for i in want
        )
        if done and page.evaluate(_KERNEL_IDLE):
            return cells
        if time.monotonic() > deadline:
            pending = [i for i in want if cells[i]["count"] is None]
            raise AssertionError(f"cells {pending} had not run after {timeout} s")
        page.wait_for_timeout(1000)


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _panel_state(panel):
    return panel.evaluate("""el => ({
      status: (el.querySelector('.labkit-status') || {}).innerText || '',
      text: el.innerText,
      running: !!el.querySelector('button:disabled') && [...el.querySelectorAll('button')]
                 .some(b => b.innerText.trim() === 'Run' && b.disabled),
      images: [...el.querySelectorAll('.labkit-view img')].map(i => ({w: i.naturalWidth, h: i.naturalHeight})),
      broken: [...el.querySelectorAll('img')].filter(i => i.offsetParent !== null && i.naturalWidth === 0).length,
      tables: el.querySelectorAll('.labkit-view table').length,
    })""")


def _column(panel, column: str) -> list[str]:
    return panel.evaluate(
        """(el, column) => {
      const t = el.querySelector('.labkit-view table');
      if (!t) return null;
      // a named index adds a second header row: take the row that holds the column's name
      const rows = [...t.querySelectorAll('thead tr')].map(r => [...r.children].map(h => h.innerText.trim()));
      const names = rows.find(r => r.includes(column));
      if (!names) return {missing: rows};
      const at = names.indexOf(column);
      return [...t.querySelectorAll('tbody tr')].map(r => r.children[at].innerText.trim());
    }""",
        column,
    )


def _wait_panel(panel, page, done, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        st = _panel_state(panel)
        if done(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not there after {timeout} s; the panel shows:\n{st['text'][-2000:]}")
        page.wait_for_timeout(1000)


def _set_slider(panel, name: str, value: float) -> None:
    control = panel.locator(
        ".labkit-control", has=panel.page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(name)}$"))
    )
    readout = control.locator(".widget-readout")
    readout.click()
    readout.press("Control+a")
    readout.type(f"{value:g}")
    readout.press("Enter")
    panel.page.wait_for_timeout(500)
    shown = readout.inner_text().strip()
    assert float(shown) == value, f"the {name} slider reads {shown!r} after typing {value:g}"


@pytest.mark.browser
@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.notebook for lesson in LESSONS])
def test_notebook_in_jupyterlab(lab, lesson: Lesson, tmp_path) -> None:
    shots = Path(os.environ.get("LABKIT_BROWSER_SHOTS") or tmp_path) / lesson.notebook.removesuffix(".ipynb")
    shots.mkdir(parents=True, exist_ok=True)
    page = lab["browser"].new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(120_000)  # loading JupyterLab and screenshots of a long page, on a loaded machine
    t_start = time.monotonic()
    try:
        page.goto(f"{lab['base']}/lab/tree/{lesson.notebook}?reset&token={lab['token']}")  # reset: no other tabs
        page.wait_for_function(_KERNEL_IDLE, timeout=120_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")

        # 1. Run All
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        cells = _wait_cells_ran(page, None, RUN_ALL_TIMEOUT)
        t_run_all = time.monotonic() - t_start
        panel = page.locator(".labkit-panel").first
        panel.scroll_into_view_if_needed()
        st = _panel_state(panel)
        page.screenshot(path=str(shots / "1-after-run-all.png"))
        assert st["tables"] >= 1, f"the panel shows no table after Run All:\n{st['text'][-1500:]}"
        assert st["images"] and all(i["w"] > 0 for i in st["images"]), st["images"]
        assert st["broken"] == 0, "a broken image is shown in the panel"
        body = page.inner_text("body")
        for bad in BAD_TEXT:
            assert bad not in body, f"{bad!r} shown on the page after Run All"

        # 2. move a slider, Run: the cleanup cell stopped the servers, the panel says what to do
        _set_slider(panel, lesson.slider, lesson.value)
        panel.get_by_role("button", name="Run").click()
        st = _wait_panel(panel, page, lambda s: "Setup" in s["status"], 120, "the closed-stack advice")
        panel.screenshot(path=str(shots / "2-run-after-cleanup.png"))
        assert "ConnectionRefusedError" not in st["status"] and "Traceback" not in st["text"], st["status"]

        # 3. the Setup cell again, then Run: the table shows the new value, the plots are images
        setup = next(i for i, c in enumerate(cells) if "labkit.stack(" in c["source"])
        before = {setup: cells[setup]["count"]}
        page.evaluate(f"""() => {{ const nb = {_NB}.content; nb.activeCellIndex =
            nb.widgets.indexOf(nb.widgets.filter(c => c.model.type === 'code')[{setup}]);
            return window.jupyterapp.commands.execute('notebook:run-cell'); }}""")
        _wait_cells_ran(page, [setup], RUN_ALL_TIMEOUT, before)
        t0 = time.monotonic()
        panel.get_by_role("button", name="Run").click()
        st = _wait_panel(panel, page, lambda s: "Setup" not in s["status"], 30, "Run after Setup again")
        label = f"{lesson.slider}={lesson.value:g}"
        st = _wait_panel(
            panel,
            page,
            lambda s: ("showing the run with" in s["status"] and label in s["status"]) or "failed after" in s["text"],
            PANEL_RUN_TIMEOUT,
            f"a run with {label}",
        )
        t_panel = time.monotonic() - t0
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(shots / "3-after-run-with-new-value.png"))
        page.screenshot(path=str(shots / "3-page.png"))
        assert "failed after" not in st["text"], st["status"]
        col = _column(panel, lesson.column)
        assert isinstance(col, list) and col, f"column {lesson.column!r} not in the panel's table: {col}"
        assert all(float(v) == lesson.value for v in col), f"{lesson.column}: {col}, expected {lesson.value:g}"
        assert st["images"] and all(i["w"] > 0 and i["h"] > 0 for i in st["images"]), st["images"]
        assert st["broken"] == 0
        for bad in BAD_TEXT:
            assert bad not in st["text"], f"{bad!r} in the panel after Run"
        assert "Loading widget" not in page.inner_text("body")

        # 4. cleanup again (the servers Setup restarted), save: no widget views in the saved file
        cleanup = max(i for i, c in enumerate(cells) if "st.close()" in c["source"])
        before = {cleanup: _cells(page)[cleanup]["count"]}
        page.evaluate(f"""() => {{ const nb = {_NB}.content; nb.activeCellIndex =
            nb.widgets.indexOf(nb.widgets.filter(c => c.model.type === 'code')[{cleanup}]);
            return window.jupyterapp.commands.execute('notebook:run-cell'); }}""")
        _wait_cells_ran(page, [cleanup], 120, before)
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_timeout(2000)
        saved = json.loads((lab["nbdir"] / lesson.notebook).read_text())
        views = [
            i
            for i, c in enumerate(saved["cells"])
            for o in c.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" in (o.get("data") or {})
        ]
        assert not views, f"widget views saved in cells {views}: reopening would show 'model not found'"
        print(
            f"\n{lesson.notebook}: Run All {t_run_all:.0f} s, panel run with {label} {t_panel:.0f} s, "
            f"screenshots in {shots}"
        )
    except BaseException:
        try:
            page.screenshot(path=str(shots / "failure.png"))
        except Exception as exc:  # noqa: BLE001 - keep the test's own error, not the screenshot's
            print(f"no failure screenshot: {exc}")
        raise
    finally:
        page.close()
        _shutdown_kernel(lab, lesson.notebook)


def _shutdown_kernel(lab, notebook: str) -> None:
    """End the notebook's kernel through the server's REST API (its servers were closed by the cleanup cell)."""
    url = f"{lab['base']}/api/sessions?token={lab['token']}"
    with urllib.request.urlopen(url, timeout=10) as r:
        sessions = json.load(r)
    for s in sessions:
        if s.get("path", "").endswith(notebook):
            req = urllib.request.Request(f"{lab['base']}/api/sessions/{s['id']}?token={lab['token']}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()
