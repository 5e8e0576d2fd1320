"""A small Instagram-like web tier served by REAL servers (gunicorn, uvicorn) for lessons 04 and 08.

- ``core``: configuration from the environment, the shared in-memory heap (profiles every worker imports
  before fork), the feed logic and the two card renderers (naive / cached serializer).
- ``wsgi``: the WSGI app (gunicorn sync workers: one request at a time per process).
- ``asgi``: the ASGI app (uvicorn: one event loop, async psycopg and an async memcached client).
- ``dependency``: a slow downstream HTTP service whose latency each request chooses (``/?ms=50``).
- ``httpclient``: a lean HTTP/1.1 keep-alive client (blocking and asyncio) used by the apps to call the
  dependency and by ``labkit.load.http`` to drive load at the servers.

The servers import these modules from the process that labkit starts (``labkit.services.web``); nothing
here runs inside a notebook's kernel except ``core.prepare`` and the client.
"""
