"""Run the whole course headless: execute every notebook, render it to HTML, summarise the checkpoints.

    labkit course                     # all notebooks in notebooks/, output in course-output/
    LABKIT_PROFILE=ci labkit course   # the short CI profile

Each notebook runs in its own kernel (so each starts and stops its own servers, or attaches to `labkit up`);
checkpoints append JSON lines to a log the runner reads back for the summary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from labkit import config
from labkit.errors import LabkitError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def find_notebooks(names: list[str]) -> list[Path]:
    if not names:
        found = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
        if not found:
            raise LabkitError(f"no notebooks found in {NOTEBOOK_DIR}: run from a checkout of the course")
        return found
    out = []
    for n in names:
        p = Path(n)
        if not p.exists():
            p = NOTEBOOK_DIR / n
        if not p.exists():
            raise LabkitError(f"notebook '{n}' not found (looked in . and {NOTEBOOK_DIR})")
        out.append(p)
    return out


def run_course(names: list[str], out_dir: str = "course-output", timeout: int = 1800) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    notebooks = find_notebooks(names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "checkpoints.jsonl").resolve()
    log.unlink(missing_ok=True)
    # settings reach each kernel through its own environment; this process's stays untouched
    base_env = {
        **os.environ,
        "MPLBACKEND": os.environ.get("MPLBACKEND", "module://matplotlib_inline.backend_inline"),
        **config.current().replace(checkpoint_log=log).to_env(),
    }
    rows = []
    for nb_path in notebooks:
        print(f"== {nb_path.name} ...", flush=True)
        nb = nbformat.read(nb_path, as_version=4)
        start = time.monotonic()
        env = {**base_env, **config.current().replace(checkpoint_log=log, notebook=nb_path.stem).to_env()}
        error = ""
        try:
            NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}}
            ).execute(env=env)
        except CellExecutionError as e:
            error = str(e).strip().splitlines()[-1][:300] if str(e).strip() else "a cell failed"
        except Exception as e:  # noqa: BLE001 - a kernel that died is reported, the course goes on
            error = f"{type(e).__name__}: {e}"[:300]
        seconds = time.monotonic() - start
        nbformat.write(nb, out / nb_path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out / f"{nb_path.stem}.html").write_text(html)
        rows.append({"notebook": nb_path.stem, "seconds": round(seconds, 1), "error": error})
        print(f"   {'FAILED: ' + error if error else 'ok'} ({seconds:.0f} s)", flush=True)
    checks = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    print("\nCheckpoints")
    for c in checks:
        mark = "PASS" if c.get("passed") else "FAIL"
        print(
            f"  {mark}  {c.get('notebook', '?'):<22} {c['claim']}  (measured {c['measured']:.4g}, bound {c['bound']})"
        )
    failed = [r for r in rows if r["error"]] + [c for c in checks if not c.get("passed")]
    print(
        f"\n{len(rows)} notebooks, {sum(1 for c in checks if c.get('passed'))} checkpoints passed, "
        f"{len(failed)} failures. HTML in {out}/"
    )
    (out / "summary.json").write_text(json.dumps({"notebooks": rows, "checkpoints": checks}, indent=2))
    return 1 if failed else 0
