"""Run Django's own cache-backend tests (``BaseCacheTests`` of ``tests/cache/tests.py``,
the class Django runs for its ``RedisCache``) against ``hitrate.contrib.django.HitrateCache``
on a private server.

Django's tests ship in its source distribution, not in the wheel: this downloads the sdist
of the installed Django version (``pip download``, kept in ``~/.cache/hitrate/``), extracts
``tests/cache/`` into a temporary directory and runs it there. Nothing of Django's is kept
in this repository. ``make test-frameworks`` runs it::

    .venv/bin/python tests/frameworks/django_suite.py [-v 2] [test name ...]

Exit status 0 when every test passes (skips listed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sdist import extract

#: Tests of BaseCacheTests that do not apply, and why (also listed in docs/frameworks.md).
SKIPPED = {
    "test_cull": "culling (MAX_ENTRIES) is a local-memory/file/database backend feature; "
    "Redis evicts by its maxmemory policy (Django's RedisCache skips it too)",
    "test_zero_cull": "as test_cull (CULL_FREQUENCY); Django's RedisCache skips it too",
    "test_cull_delete_when_store_empty": "as test_cull; Django's RedisCache skips it too",
}

SETTINGS = """
SECRET_KEY = "django-suite-secret-key-for-signing-cache-entries"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "cache"]
USE_TZ = False
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
CACHES = {"default": {"BACKEND": "hitrate.contrib.django.HitrateCache", "LOCATION": URL}}
"""

TESTS = '''
from django.test import TestCase, override_settings

from .tests import BaseCacheTests, caches_setting_for_tests

PARAMS = {"BACKEND": "hitrate.contrib.django.HitrateCache", "LOCATION": URL}


@override_settings(
    CACHES=caches_setting_for_tests(base=PARAMS, exclude={"cull", "zero_cull"})
)
class HitrateCacheTests(BaseCacheTests, TestCase):
    """Django's BaseCacheTests, unchanged, on HitrateCache."""
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbosity", type=int, default=1)
    parser.add_argument("tests", nargs="*", help="test names, e.g. test_incr")
    args = parser.parse_args()

    import django

    from hitrate.server import EmbeddedServer, find_servers

    version = django.get_version()
    with tempfile.TemporaryDirectory(prefix="hitrate-django-suite-") as tmp:
        root = Path(tmp)
        extract("django", version, "tests/cache/", root / "cache")
        flavour = sorted(find_servers())[0]
        server = EmbeddedServer.start(flavour)
        try:
            url = repr(server.url)
            (root / "suite_settings.py").write_text(SETTINGS.replace("URL", url))
            (root / "cache" / "test_hitrate.py").write_text(TESTS.replace("URL", url))
            sys.path.insert(0, str(root))
            import os

            os.environ["DJANGO_SETTINGS_MODULE"] = "suite_settings"
            django.setup()
            return run(version, flavour, args.tests, args.verbosity)
        finally:
            server.stop()


def run(version: str, flavour: str, names: list[str], verbosity: int) -> int:
    import unittest

    from cache.test_hitrate import HitrateCacheTests  # type: ignore[import-not-found]
    from django.test.runner import DiscoverRunner

    for name, reason in SKIPPED.items():
        setattr(HitrateCacheTests, name, unittest.skip(reason)(getattr(HitrateCacheTests, name)))
    labels = [f"cache.test_hitrate.HitrateCacheTests.{n}" for n in names] or ["cache.test_hitrate"]
    print(f"Django {version} BaseCacheTests on HitrateCache ({flavour} server)")
    runner = DiscoverRunner(verbosity=verbosity, interactive=False)
    runner.setup_test_environment()
    suite = runner.build_suite(labels)
    old = runner.setup_databases()
    try:
        result = runner.run_suite(suite)
    finally:
        runner.teardown_databases(old)
        runner.teardown_test_environment()
    ran = result.testsRun
    bad = len(result.failures) + len(result.errors)
    skipped = len(result.skipped)
    print("\nskipped:" if skipped else "")
    for test, reason in result.skipped:
        print(f"  {test.id().rsplit('.', 1)[-1]}: {reason}")
    print(f"{ran - bad - skipped} passed, {bad} failed, {skipped} skipped")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
