"""hitrate for Django (``pip install 'hitrate[django]'``): a ``CACHES`` backend, a stats
dashboard to mount in ``urls.py`` and a ``hitrate_stats`` management command (add
``"hitrate.contrib.django"`` to ``INSTALLED_APPS`` for the command)::

    CACHES = {"default": {"BACKEND": "hitrate.contrib.django.HitrateCache",
                          "LOCATION": "redis://localhost:6379/0"}}
"""

from ..._extras import missing_extra

try:
    from .backend import HitrateCache, versioned_key
except ImportError as exc:
    if exc.name is None or not exc.name.startswith("django"):
        raise
    raise missing_extra("hitrate.contrib.django", "Django", "django", exc) from exc

__all__ = ["HitrateCache", "versioned_key"]
