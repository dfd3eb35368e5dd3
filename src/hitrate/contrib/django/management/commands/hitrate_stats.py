"""``manage.py hitrate_stats [--cache default] [--minutes 60] [--json]``: hit rate per key
family of a hitrate cache, from every process."""

from __future__ import annotations

import json
from typing import Any

from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandError, CommandParser

from .....errors import HitrateError
from ...backend import HitrateCache


class Command(BaseCommand):  # type: ignore[misc]  # Django has no type hints
    help = "Hit rate per key family of a hitrate.contrib.django.HitrateCache, from every process."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--cache", default="default", help="the CACHES alias (default)")
        parser.add_argument("--minutes", type=int, default=None, help="only the last N minutes")
        parser.add_argument("--json", action="store_true", help="print Stats.as_dict() as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        backend = caches[options["cache"]]
        if not isinstance(backend, HitrateCache):
            raise CommandError(
                f"CACHES[{options['cache']!r}] is not hitrate.contrib.django.HitrateCache"
            )
        try:
            stats = backend.hitrate.stats(minutes=options["minutes"])
        except HitrateError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(stats.as_dict(), indent=2, default=str))
            return
        self.stdout.write(
            f"prefix {stats.prefix}: hit rate {stats.hit_rate:.2f} % ({stats.verdict.value}), "
            f"{stats.hits:,} hits, {stats.misses:,} misses; redis memory {stats.memory_used}"
        )
        self.stdout.write(f"{'family':<20} {'reads':>10} {'hit rate':>9}  verdict")
        for row in stats.families:
            reads = row.hits + row.misses
            self.stdout.write(
                f"{row.family:<20} {reads:>10,} {row.hit_rate:>8.2f}%  {row.verdict.value}"
            )
