"""The headless course runner: executes notebooks in real kernels, renders HTML, summarises checkpoints."""

from __future__ import annotations

import json

import nbformat

from labkit.course import run_course


def notebook(path, *sources: str) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return str(path)


def test_course_run_renders_html_and_summarises_checkpoints(tmp_path, capsys):
    good = notebook(
        tmp_path / "01-good.ipynb",
        "from labkit.checkpoints import checkpoint\n_ = checkpoint('measured value is at least two', 2.5, at_least=2)",
    )
    bad = notebook(
        tmp_path / "02-bad.ipynb",
        "from labkit.checkpoints import checkpoint\n"
        "_ = checkpoint('hit ratio is high', 0.41, at_least=0.6, context='zipf s=0.99')",
    )
    out = tmp_path / "out"
    rc = run_course([good, bad], out_dir=str(out), timeout=120)
    assert rc == 1  # one checkpoint failed, so the course run fails
    summary = json.loads((out / "summary.json").read_text())
    by_nb = {r["notebook"]: r for r in summary["notebooks"]}
    assert by_nb["01-good"]["error"] == ""
    assert "CheckpointFailed" in by_nb["02-bad"]["error"] or "0.41" in by_nb["02-bad"]["error"]
    claims = {c["claim"]: c for c in summary["checkpoints"]}
    assert claims["measured value is at least two"]["passed"] is True
    assert claims["measured value is at least two"]["notebook"] == "01-good"
    assert (out / "01-good.html").read_text().count("PASS") >= 1
    assert (out / "02-bad.html").exists()
    text = capsys.readouterr().out
    assert "PASS  01-good" in text and "1 checkpoints passed" in text
