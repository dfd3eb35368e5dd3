"""Framework integrations, each behind its own extra (``pip install 'hitrate[django]'``):
``hitrate.contrib.django`` (a Django ``CACHES`` backend) and ``hitrate.contrib.flask``
(a Flask-Caching backend and the ``Hitrate`` extension)."""
