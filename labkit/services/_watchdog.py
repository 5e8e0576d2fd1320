"""Watchdog of a private stack: `python -m labkit.services._watchdog <record>`.

Runs in its own session so that killing a kernel (even with SIGKILL, even its whole process group) does not
kill it. It polls the owner named in the record; when the owner is gone it reaps the stack's servers and
removes the record. When the record disappears (the stack was closed normally) it exits.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from labkit.errors import StateError
from labkit.services import stack_records as stacks


def main(record: Path, interval: float = 0.5) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            rec = stacks.read_record(record)
        except (FileNotFoundError, StateError):
            return 0
        if not stacks.owner_alive(rec):
            with stacks._locked():
                stacks.reap_record(rec)
                record.unlink(missing_ok=True)
            return 0
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
