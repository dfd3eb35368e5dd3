"""The live web dashboard (``hitrate dashboard``; ``pip install 'hitrate[dashboard]'``).

A small ASGI app (Starlette): one page that refreshes itself, ``/api/stats`` (JSON) and
``/metrics`` (Prometheus text, for the whole cache: see :mod:`hitrate.prometheus`)::

    from hitrate.dashboard import create_app
    app = create_app("redis://localhost:6379/0", prefix="app")   # run with any ASGI server
"""

from .._extras import missing_extra

try:
    from .app import create_app
except ImportError as exc:
    if exc.name is None or not exc.name.startswith("starlette"):
        raise
    raise missing_extra("hitrate.dashboard", "starlette and uvicorn", "dashboard", exc) from exc

__all__ = ["create_app"]
