"""Framework integrations, each behind its own extra: ``hitrate.contrib.django`` (a Django
``CACHES`` backend; ``pip install 'hitrate[django]'``), ``hitrate.contrib.flask`` (a
Flask-Caching backend and the ``Hitrate`` extension; ``hitrate[flask]``),
``hitrate.contrib.sqlalchemy`` (invalidate on commit, cached queries; ``hitrate[sqlalchemy]``)
and ``hitrate.contrib.fastapi`` (lifespan, dependency, HTTP response cache;
``hitrate[fastapi]``). Importing this package imports none of them."""
