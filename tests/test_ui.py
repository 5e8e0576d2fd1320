"""The widget panel (headless and its background-run path) and the standard plots."""

from __future__ import annotations

import time

import matplotlib
import pytest

matplotlib.use("Agg")

import labkit.ui as ui  # noqa: E402
from labkit.errors import BadParameter  # noqa: E402
from labkit.load import Workload, Zipf, drivers, run  # noqa: E402
from labkit.load.drivers import consistency_level  # noqa: E402


@pytest.fixture
def experiment(mc):
    drv = drivers.memcached(mc)

    def cache_experiment(
        clients: int = 4,
        s: float = 0.9,
        read_share: float = 0.9,
        consistency: str = "ONE",
        rate: float = 0.0,
        seconds: float = 1.0,
        progress=None,
        stop=None,
    ):
        consistency_level(consistency)  # validated as a Cassandra lesson would
        wl = Workload(
            keys=Zipf(500, s),
            mix={"get": read_share, "set": 1 - read_share},
            clients=clients,
            rate=rate or None,
            duration=seconds,
            key_format="ui:{}",
        )
        return run(drv.get_set_op(), wl, progress=progress, stop=stop)

    return cache_experiment


def test_headless_panel_runs_defaults_against_memcached(experiment, monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    res = ui.panel(experiment, clients=(1, 32), s=(0.0, 1.5, 0.05), consistency=["ONE", "QUORUM"])
    assert res.error_count == 0 and res.ops > 0, res.summary()
    assert res.params["clients"] == 4 and res.params["zipf_s"] == 0.9
    assert ui.result_of(res) is res


def test_decorator_form_is_headless_too(monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_HEADLESS", "1")

    @ui.panel(n=(1, 10))
    def square(n: int = 3) -> int:
        return n * n

    assert square == 9


def test_plain_python_is_headless(monkeypatch) -> None:
    monkeypatch.delenv("LABKIT_HEADLESS", raising=False)
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    assert ui.headless()  # no IPython kernel in a pytest process


@pytest.mark.parametrize(
    "specs, words",
    [
        ({"clients": (32, 1)}, "reversed"),
        ({"clients": (10, 20)}, "outside its range"),  # default 4 not in [10, 20]
        ({"nodes": (1, 3)}, "not parameters"),
        ({"consistency": ["QUORUM", "ALL"]}, "choose one of"),
        ({"s": "big"}, "range"),
    ],
)
def test_bad_panel_specs_are_clear(experiment, specs, words, monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    with pytest.raises(BadParameter, match=words):
        ui.panel(experiment, **specs)


@pytest.mark.parametrize(
    "override, words",
    [
        ({"clients": -2}, "clients"),
        ({"s": -0.5}, ">= 0"),
        ({"consistency": "MOSTLY"}, "unknown consistency level"),
        ({"rate": -1.0}, "rate"),
    ],
)
def test_bad_experiment_values_give_clear_errors(experiment, override, words) -> None:
    with pytest.raises(BadParameter, match=words):
        experiment(**override)


def test_rate_zero_is_rejected() -> None:
    with pytest.raises(BadParameter, match="rate"):
        Workload(rate=0)


def test_interactive_panel_runs_in_background_and_stops(experiment) -> None:
    """The widget path without a browser: the run must not block the caller, Stop must end it."""
    from labkit.ui.panel import params_for

    params, extras = params_for(experiment, {"clients": (1, 16), "seconds": (0.5, 30.0)})
    p = ui.Panel(experiment, params, extras, "cache", live=True)
    p.controls["seconds"].value = 20.0
    t0 = time.monotonic()
    p.start()
    assert time.monotonic() - t0 < 0.5, "start() blocked the kernel"
    time.sleep(1.2)
    p.stop_button.click()
    res = p.wait(timeout=60)
    # the measured run ended well before its 20 s (wall time adds result building and the last plot,
    # which a loaded machine stretches; the run's own duration does not depend on that)
    assert res.stopped == "stopped" and res.ops > 0
    assert res.duration < 10, f"Stop did not end the run: it lasted {res.duration:.1f} s of 20 s"
    assert p.image.value[:4] == b"\x89PNG"  # the live plot was drawn
    assert "ops/s" in p.status.value
    # a bad value typed into a widget shows up as a clear error in the panel, not a dead kernel
    p.start(clients=-1)
    with pytest.raises(BadParameter):
        p.wait(timeout=60)
    assert "clients" in p.status.value


def _panel(fn, view=None, **specs):
    from labkit.ui.panel import params_for

    params, extras = params_for(fn, specs)
    return ui.Panel(fn, params, extras, None, live=True, view=view)


def _html(outputs) -> str:
    return "".join(o["data"].get("text/html", "") for o in outputs)


def test_view_is_redrawn_in_place_after_each_run(experiment) -> None:
    """The lesson's view (a table and a figure) replaces the previous one after every run, with the
    run's own numbers; the live image is hidden once the view is drawn (never an empty image)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    def view(res):
        fig, ax = plt.subplots()
        ax.plot([r["t"] for r in res.rows], [r["ops"] for r in res.rows])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("ops per interval")
        plt.figure()  # a stray figure the view forgot: closed by the panel, never shown later
        return [pd.DataFrame([{"clients": res.params["clients"], "ops": res.ops}]), fig]

    p = _panel(experiment, view=view, clients=(1, 16), seconds=(0.5, 5.0))
    assert p.image.layout.display == "none", "an empty image widget renders as a broken-image icon"
    figs_before = set(plt.get_fignums())
    p.controls["seconds"].value = 0.6
    for clients in (2, 5):
        p.controls["clients"].value = clients
        p.start()
        res = p.wait(timeout=60)
        outs = p.output.outputs
        assert len(outs) == 2, outs  # replaced, not appended
        assert f"<td>{clients}</td>" in _html(outs) and f"<td>{res.ops}</td>" in _html(outs)
        assert outs[1]["data"]["image/png"], "the figure is sent as a PNG image"
        assert f"clients={clients}" in p.status.value
        assert p.bar.value == 1.0 and "done in" in p.bar_label.value
        assert p.image.layout.display == "none"
    assert set(plt.get_fignums()) == figs_before, "figures of the view were left open"


def test_progress_fraction_text_and_elapsed_estimate(monkeypatch) -> None:
    """A sweep reports progress(fraction, text); a function that reports nothing gets elapsed time and,
    from its second run, an estimate from the previous run's length."""
    seen = []

    def sweep(points: int = 3, progress=None):
        for i in range(points):
            time.sleep(0.3)
            progress((i + 1) / points, f"point {i + 1}")
            seen.append(p.bar_label.value)
        return points

    p = _panel(sweep, points=(1, 5))
    p.start()
    assert p.wait(timeout=60) == 3
    assert seen[0].startswith("33%") and "point 1" in seen[0], seen

    def silent(n: int = 1):
        time.sleep(2.5)
        return n

    q = _panel(silent, n=(1, 3))
    labels = []
    for _ in range(2):
        q.start()
        while not q._done.wait(0.2):
            labels.append((q.bar.value, q.bar_label.value))
    assert any(lbl.endswith(" s") for _, lbl in labels), labels
    assert any("the last run took" in lbl and 0 < v < 1 for v, lbl in labels), labels


def test_closed_stack_says_run_setup_again() -> None:
    """After the cleanup cell, Run does not start and says which cell to run; after Setup again it runs."""
    import labkit
    from labkit.memcache_meta import MetaClient
    from labkit.ui.hints import StackClosed, explain

    g = {"MetaClient": MetaClient, "labkit": labkit}
    exec(
        "st = labkit.stack('memcached', attach=False)\nMC = st.endpoint('memcached').address\n"
        "def touch(n: int = 2):\n"
        "    with MetaClient(MC) as mc:\n"
        "        for i in range(n):\n"
        "            mc.set(f'k{i}', b'v')\n"
        "    return n\n",
        g,
    )
    try:
        p = _panel(g["touch"], n=(1, 5))
        p.start()
        assert p.wait(timeout=60) == 2
        g["st"].close()  # the notebook's cleanup cell
        p.controls["n"].value = 3
        p.start()
        with pytest.raises(StackClosed):
            p.wait(timeout=5)
        assert "Setup" in p.status.value and "st.close()" in p.status.value
        assert "Traceback" not in p.status.value
        # a run that was already under way when the servers went away gets the same advice
        assert "Setup" in explain(ConnectionRefusedError(111, "refused"), g["touch"])
        g["_4"] = g["st"]  # IPython's output history keeps the old, closed stack (the Setup cell displayed it)
        exec("st = labkit.stack('memcached', attach=False)\nMC = st.endpoint('memcached').address\n", g)
        p.start()  # Setup ran again: the same panel works, its function reads the new globals
        assert p.wait(timeout=60) == 3
        # a server that died (not closed): the hint names it and says how to restart it
        g["st"].service("memcached").kill()
        p.start()
        with pytest.raises(Exception):
            p.wait(timeout=60)
        assert "memcached" in p.status.value and "st.restart" in p.status.value, p.status.value
    finally:
        g["st"].close()


def test_panels_run_one_at_a_time() -> None:
    """Run All starts every panel's default run: they queue, so no two measure at the same time."""
    spans = []

    def slow(n: int = 1):
        t = time.monotonic()
        time.sleep(0.6)
        spans.append((t, time.monotonic()))
        return n

    a, b = _panel(slow, n=(1, 3)), _panel(slow, n=(1, 3))
    a.start()
    b.start()
    time.sleep(0.2)
    assert "waiting for another panel" in b.bar_label.value
    assert a.wait(timeout=60) == 1 and b.wait(timeout=60) == 1
    (s1, e1), (s2, e2) = sorted(spans)
    assert s2 >= e1, f"the runs overlapped: {spans}"
    # Stop on a queued run ends it before it starts
    a.start()
    b.start()
    b.stop_button.click()
    with pytest.raises(Exception, match="before it started"):
        b.wait(timeout=60)
    a.wait(timeout=60)


def test_claim_result_uses_the_defaults_and_says_so(capsys) -> None:
    calls = []

    def exp(n: int = 4, progress=None):
        calls.append(n)
        return {"n": n}

    p = _panel(exp, n=(1, 10))
    assert p.claim_result(timeout=5) == {"n": 4}  # never run: measured now at the defaults
    assert "Measuring at the lesson's settings (n=4)" in capsys.readouterr().out
    p.controls["n"].value = 7
    p.start()
    assert ui.result_of(p, timeout=5) == {"n": 7}
    assert ui.claim_result(p) == {"n": 4}
    out = capsys.readouterr().out
    assert "your last Run used n=7" in out and "stated at n=4" in out
    assert calls == [4, 7], "the run at the defaults was measured again instead of reused"
    assert ui.claim_result({"n": 4}) == {"n": 4}  # headless: the value itself


def test_headless_view_returns_the_result_unchanged(monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    shown = []
    assert ui.panel(lambda n=3: n * 2, n=(1, 5), view=lambda r: shown.append(r)) == 6
    assert shown == []  # no kernel: nothing to display into
    with pytest.raises(BadParameter, match="view="):
        ui.panel(lambda n=3: n, view="table")


def test_view_values_render_as_tables_images_and_markdown() -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from labkit.ui import view

    _, axes = plt.subplots(1, 2)
    items = view.render([pd.DataFrame({"a": [1]}), axes, "**bold**", None, [pd.Series([2], name="b")]])
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["HTML", "Image", "Markdown", "HTML"], kinds
    outs = view.as_outputs(items)
    assert "image/png" in outs[1]["data"] and "<table" in outs[0]["data"]["text/html"]
    assert isinstance(axes, np.ndarray)


def test_pre_save_hook_strips_widget_views_only() -> None:
    from labkit.ui.jupyter import WIDGET_VIEW, strip_widget_views

    table = {"output_type": "display_data", "data": {"text/html": "<table></table>"}, "metadata": {}}
    widget = {
        "output_type": "display_data",
        "data": {WIDGET_VIEW: {"model_id": "abc"}, "text/plain": "VBox()"},
        "metadata": {},
    }
    model = {
        "type": "notebook",
        "content": {
            "metadata": {"widgets": {"state": {}}},
            "cells": [{"cell_type": "code", "outputs": [widget, table]}, {"cell_type": "markdown"}],
        },
    }
    strip_widget_views(model)
    assert model["content"]["cells"][0]["outputs"] == [table]
    assert "widgets" not in model["content"]["metadata"]
    strip_widget_views({"type": "file", "content": "x"})  # other files untouched


def test_plots_have_units(experiment) -> None:
    a = experiment(seconds=0.6)
    b = experiment(seconds=0.6, clients=2)
    ax = ui.plots.latency_cdf([a, b], labels=["4 clients", "2 clients"])
    assert "ms" in ax.get_xlabel()
    ax = ui.plots.throughput(a, latency=True)
    assert "ops/s" in ax.get_ylabel() and "s" in ax.get_xlabel()
    ax = ui.plots.percentiles([a, b])
    assert "ms" in ax.get_ylabel()
    ax = ui.plots.sweep(
        [a, b], "clients", "throughput", model=lambda x: 1000 * x, xlabel="clients", ylabel="throughput (ops/s)"
    )
    assert len(ax.lines) == 2
    with pytest.raises(BadParameter, match="columns are"):
        ui.plots.sweep([a, b], "clients", "nope")


_NOTEBOOK_CELLS = [
    (
        "import os\n"
        "import labkit.ui as ui\n"
        "from labkit.load import Workload, Zipf, drivers, run\n"
        "mc = drivers.memcached(os.environ['LABKIT_TEST_MC'])"
    ),
    (
        "def experiment(clients: int = 3, s: float = 0.9, seconds: float = 1.0, progress=None, stop=None):\n"
        "    wl = Workload(keys=Zipf(200, s), mix={'get': 0.9, 'set': 0.1}, clients=clients, duration=seconds)\n"
        "    return run(mc.get_set_op(), wl, progress=progress, stop=stop)\n"
        "shown = ui.panel(experiment, clients=(1, 16), s=(0.0, 1.5, 0.05))\n"
        "res = ui.result_of(shown, timeout=60)\n"
        "assert res.ops > 0 and res.error_count == 0, res.summary()\n"
        "print(res.summary())"
    ),
    ("# NBVAL_CHECK_OUTPUT\nprint('panel returned', type(shown).__name__, '| clients', res.params['clients'])"),
]


@pytest.mark.parametrize("headless_flag, returned", [("1", "RunResult"), ("0", "Panel")])
def test_panel_in_a_notebook_run_by_nbval(mc, tmp_path, headless_flag: str, returned: str) -> None:
    """A real Jupyter kernel under nbval: headless returns the result; with a frontend assumed
    (LABKIT_HEADLESS=0) the panel runs in the background and result_of() waits for it."""
    import os
    import subprocess
    import sys

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, execution_count=i + 1) for i, src in enumerate(_NOTEBOOK_CELLS)]
    nb.cells[-1].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"panel returned {returned} | clients 3\n")
    ]
    path = tmp_path / "panel_smoke.ipynb"
    nbformat.write(nb, path)
    env = {
        **os.environ,
        "LABKIT_HEADLESS": headless_flag,
        "LABKIT_TEST_MC": f"{mc.host}:{mc.port}",
        "PYTHONPATH": os.pathsep.join(
            [str(__import__("pathlib").Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--nbval-lax",
            str(path),
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]  # the checked cell compared equal
