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

    def cache_experiment(clients: int = 4, s: float = 0.9, read_share: float = 0.9,
                         consistency: str = "ONE", rate: float = 0.0, seconds: float = 1.0,
                         progress=None, stop=None):
        consistency_level(consistency)  # validated as a Cassandra lesson would
        wl = Workload(keys=Zipf(500, s), mix={"get": read_share, "set": 1 - read_share}, clients=clients,
                      rate=rate or None, duration=seconds, key_format="ui:{}")
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


@pytest.mark.parametrize("specs, words", [
    ({"clients": (32, 1)}, "reversed"),
    ({"clients": (10, 20)}, "outside its range"),  # default 4 not in [10, 20]
    ({"nodes": (1, 3)}, "not parameters"),
    ({"consistency": ["QUORUM", "ALL"]}, "choose one of"),
    ({"s": "big"}, "range"),
])
def test_bad_panel_specs_are_clear(experiment, specs, words, monkeypatch) -> None:
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    with pytest.raises(BadParameter, match=words):
        ui.panel(experiment, **specs)


@pytest.mark.parametrize("override, words", [
    ({"clients": -2}, "clients"),
    ({"s": -0.5}, ">= 0"),
    ({"consistency": "MOSTLY"}, "unknown consistency level"),
    ({"rate": -1.0}, "rate"),
])
def test_bad_experiment_values_give_clear_errors(experiment, override, words) -> None:
    with pytest.raises(BadParameter, match=words):
        experiment(**override)


def test_rate_zero_is_rejected() -> None:
    with pytest.raises(BadParameter, match="rate"):
        Workload(rate=0)


def test_interactive_panel_runs_in_background_and_stops(experiment) -> None:
    """The widget path without a browser: the run must not block the caller, Stop must end it."""
    from labkit.ui.panel import _params
    params, extras = _params(experiment, {"clients": (1, 16), "seconds": (0.5, 30.0)})
    p = ui.Panel(experiment, params, extras, "cache", live=True)
    p.controls["seconds"].value = 20.0
    t0 = time.monotonic()
    p.start()
    assert time.monotonic() - t0 < 0.5, "start() blocked the kernel"
    time.sleep(1.2)
    p.stop_button.click()
    res = p.wait(timeout=10)
    assert time.monotonic() - t0 < 8, "Stop did not end the run"
    assert res.stopped == "stopped" and res.ops > 0
    assert p.image.value[:4] == b"\x89PNG"  # the live plot was drawn
    assert "ops/s" in p.status.value
    # a bad value typed into a widget shows up as a clear error in the panel, not a dead kernel
    p.start(clients=-1)
    with pytest.raises(BadParameter):
        p.wait(timeout=10)
    assert "clients" in p.status.value


def test_plots_have_units(experiment) -> None:
    a = experiment(seconds=0.6)
    b = experiment(seconds=0.6, clients=2)
    ax = ui.plots.latency_cdf([a, b], labels=["4 clients", "2 clients"])
    assert "ms" in ax.get_xlabel()
    ax = ui.plots.throughput(a, latency=True)
    assert "ops/s" in ax.get_ylabel() and "s" in ax.get_xlabel()
    ax = ui.plots.percentiles([a, b])
    assert "ms" in ax.get_ylabel()
    ax = ui.plots.sweep([a, b], "clients", "throughput", model=lambda x: 1000 * x,
                        xlabel="clients", ylabel="throughput (ops/s)")
    assert len(ax.lines) == 2
    with pytest.raises(BadParameter, match="columns are"):
        ui.plots.sweep([a, b], "clients", "nope")


_NOTEBOOK_CELLS = [
    ("import os\n"
     "import labkit.ui as ui\n"
     "from labkit.load import Workload, Zipf, drivers, run\n"
     "mc = drivers.memcached(os.environ['LABKIT_TEST_MC'])"),
    ("def experiment(clients: int = 3, s: float = 0.9, seconds: float = 1.0, progress=None, stop=None):\n"
     "    wl = Workload(keys=Zipf(200, s), mix={'get': 0.9, 'set': 0.1}, clients=clients, duration=seconds)\n"
     "    return run(mc.get_set_op(), wl, progress=progress, stop=stop)\n"
     "shown = ui.panel(experiment, clients=(1, 16), s=(0.0, 1.5, 0.05))\n"
     "res = ui.result_of(shown, timeout=60)\n"
     "assert res.ops > 0 and res.error_count == 0, res.summary()\n"
     "print(res.summary())"),
    ("# NBVAL_CHECK_OUTPUT\n"
     "print('panel returned', type(shown).__name__, '| clients', res.params['clients'])"),
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
    nb.cells[-1].outputs = [nbformat.v4.new_output(
        "stream", name="stdout", text=f"panel returned {returned} | clients 3\n")]
    path = tmp_path / "panel_smoke.ipynb"
    nbformat.write(nb, path)
    env = {**os.environ, "LABKIT_HEADLESS": headless_flag, "LABKIT_TEST_MC": f"{mc.host}:{mc.port}",
           "PYTHONPATH": os.pathsep.join([str(__import__("pathlib").Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", str(path), "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]  # the checked cell compared equal
