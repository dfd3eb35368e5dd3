"""Framework integrations, each behind its extra: ``hitrate.contrib.sqlalchemy``
(``pip install 'hitrate[sqlalchemy]'``), ``hitrate.contrib.fastapi``
(``pip install 'hitrate[fastapi]'``). Importing this package imports none of them."""
