"""Count the work of N /feed requests through the WSGI app, for ``valgrind --tool=cachegrind``.

    python -m labkit.webapp.bench FIXTURE.json N [--cpu]

The fixture holds feed rows per user (fetched from Postgres by the lesson). They are put in the app's
worker-local feed cache, so the measured requests do no I/O: what is counted is the app's own CPU work per
request (routing, rendering the cards, the response). Every user is requested once before the measured
requests (warm caches), so the count of a run with N=0 is the fixed cost to subtract. With ``--cpu`` the
CPU time of the N requests is printed instead (where valgrind is not installed).
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    fixture, n = argv[0], int(argv[1])
    from labkit.webapp import wsgi

    feeds = {int(u): rows for u, rows in json.load(open(fixture)).items()}
    for u, rows in feeds.items():
        wsgi._feeds.put(u, rows)
    users = sorted(feeds)
    out: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        out.append(status)

    def request(user: int) -> None:
        body = b"".join(wsgi.app({"PATH_INFO": "/feed", "QUERY_STRING": f"user={user}"}, start_response))
        if not body.startswith(b"["):
            raise SystemExit(f"unexpected response: {body[:100]!r}")

    for u in users:  # warm-up: every card rendered once
        request(u)
    t0 = time.process_time()
    for i in range(n):
        request(users[i % len(users)])
    if "--cpu" in argv:
        print(json.dumps({"cpu_seconds": time.process_time() - t0, "requests": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
