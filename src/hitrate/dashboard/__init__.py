"""The live web dashboard (``hitrate dashboard``; ``pip install 'hitrate[dashboard]'``).

A small ASGI app (Starlette): one page that refreshes itself, ``/api/stats`` (JSON) and
``/metrics`` (Prometheus text, for the whole cache: see :mod:`hitrate.prometheus`)::

    from hitrate.dashboard import create_app
    app = create_app("redis://localhost:6379/0", prefix="app")   # run with any ASGI server
"""

from .app import create_app

__all__ = ["create_app"]
