"""Run Flask-Caching's own tests against ``hitrate.contrib.flask.HitrateCache`` on a
private server: its generic backend tests (``GenericCacheTests`` of
``tests/test_backend_cache.py``, the class every Flask-Caching backend runs), and its
``@cached``/``@memoize``/view/template/signal tests with the app's ``CACHE_TYPE`` set to
hitrate's backend instead of ``SimpleCache``.

Flask-Caching's tests ship in its source distribution: this downloads the sdist of the
installed version (``pip download``, kept in ``~/.cache/hitrate/``), copies its tests into
a temporary directory with a conftest of ours (the same fixtures, on hitrate) and runs
pytest there. Nothing of Flask-Caching's is kept in this repository::

    .venv/bin/python tests/frameworks/flask_suite.py [pytest args]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sdist import extract

#: The test files run with the app's cache on hitrate.
FILES = ["test_cache.py", "test_memoize.py", "test_view.py", "test_templates.py",
         "test_signals.py"]  # fmt: skip

#: Tests left out, and why (also listed in docs/frameworks.md).
DESELECTED = {
    "test_cache.py::test_cache_unlink": "tests Flask-Caching's own RedisCache on port 6360",
    "test_cache.py::test_cache_unlink_if_not": "configures its own SimpleCache",
    "test_cache.py::test_cache_delete_many_ignored": "configures its own SimpleCache",
}

CONFTEST = '''
"""Flask-Caching's fixtures, with the app's cache on hitrate (one prefix per test)."""
import hashlib
import os
import uuid

import flask
import pytest

import flask_caching as fsc

URL = os.environ["HITRATE_SUITE_URL"]


class _Clock:
    """Flask-Caching's fake clock; hitrate takes it as its clock= (logical expiry)."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return _Clock(1_700_000_000.0)


def hitrate_config(clock, **more):
    return {
        "SECRET_KEY": "flask-suite-secret-key-for-signing",
        "CACHE_TYPE": "hitrate.contrib.flask.HitrateCache",
        "CACHE_REDIS_URL": URL,
        "CACHE_KEY_PREFIX": "suite-" + uuid.uuid4().hex[:8],
        "CACHE_OPTIONS": {"clock": clock},
        **more,
    }


@pytest.fixture
def app(request, clock):
    app = flask.Flask(request.module.__name__, template_folder=os.path.dirname(__file__))
    app.testing = True
    app.config.update(hitrate_config(clock))
    return app


@pytest.fixture
def cache(app):
    cache = fsc.Cache(app)
    yield cache
    with app.app_context():
        cache.clear()


@pytest.fixture(params=fsc.SUPPORTED_HASH_FUNCTIONS,
                ids=[m.__name__ for m in fsc.SUPPORTED_HASH_FUNCTIONS])
def hash_method(request):
    return request.param
'''

GENERIC = '''
import flask
import pytest

import flask_caching as fsc
from conftest import hitrate_config
from test_backend_cache import GenericCacheTests


class TestHitrateCache(GenericCacheTests):
    """Flask-Caching's GenericCacheTests, unchanged, on hitrate's backend."""

    _can_use_fast_sleep = False  # Redis expires in real time

    @pytest.fixture
    def make_cache(self, clock):
        app = flask.Flask(__name__)
        app.config.update(hitrate_config(None))
        app.config["CACHE_OPTIONS"] = {}
        cache = fsc.Cache(app)
        backend = app.extensions["cache"][cache]
        yield lambda: backend
        backend.clear()
'''


def main() -> int:
    from hitrate.server import EmbeddedServer, find_servers

    flask_caching_version = version("flask-caching")
    with tempfile.TemporaryDirectory(prefix="hitrate-flask-suite-") as tmp:
        root = Path(tmp)
        tests = extract("flask-caching", flask_caching_version, "tests/", root / "tests")
        (tests / "conftest.py").write_text(CONFTEST)
        (tests / "test_hitrate_generic.py").write_text(GENERIC)
        flavour = sorted(find_servers())[0]
        server = EmbeddedServer.start(flavour)
        try:
            print(f"Flask-Caching {flask_caching_version} tests on HitrateCache ({flavour})")
            for test, reason in DESELECTED.items():
                print(f"  deselected {test}: {reason}")
            args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                    "test_hitrate_generic.py", *FILES, *sys.argv[1:]]  # fmt: skip
            args += [f"--deselect={test}" for test in DESELECTED]
            env = {**__import__("os").environ, "HITRATE_SUITE_URL": server.url}
            return subprocess.run(args, cwd=tests, env=env, check=False).returncode
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
