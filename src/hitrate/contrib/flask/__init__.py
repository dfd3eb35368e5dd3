"""hitrate for Flask (``pip install 'hitrate[flask]'``): a Flask-Caching backend
(``CACHE_TYPE = "hitrate.contrib.flask.HitrateCache"``) and the ``Hitrate(app)``
extension."""

from ..._extras import missing_extra

try:
    from .backend import HitrateCache
    from .extension import Hitrate
except ImportError as exc:
    if exc.name is None or exc.name.split(".")[0] not in ("flask", "flask_caching", "cachelib"):
        raise
    raise missing_extra("hitrate.contrib.flask", "Flask and Flask-Caching", "flask", exc) from exc

__all__ = ["Hitrate", "HitrateCache"]
