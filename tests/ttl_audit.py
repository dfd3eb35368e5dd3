"""The TTL audit: every key hitrate wrote under a test's prefix must expire, unless it is
one of the documented permanent kinds (docs/reliability.md, "Keys without a TTL").

The ``prefix`` fixture (conftest.py) calls :func:`audit` before it deletes a test's keys;
at the end of the session the keys found without a TTL are listed, and the session fails
if one is not of a permanent kind. A test that writes raw keys of its own under the
prefix (planted garbage, a foreign type) is marked ``ttl_audit_exempt``.
"""

from __future__ import annotations

import re
from collections import Counter

from hitrate.testing import raw_client

__all__ = ["PERMANENT", "audit", "classify", "found", "unknown", "violations"]

#: Kinds of hitrate keys that are permanent by design, and why.
PERMANENT = {
    "generations": "app:~gen - namespace generations and fill epochs; must outlive every "
    "entry stamped with them (small: two fields per family)",
    "structure": "app:~lb:{..}, app:~seen:{..}, app:~hll:{..} made without ttl= (the "
    "COUNTER policy: the application owns their lifetime)",
}

_KINDS = [
    ("generations", re.compile(r"^~gen$")),
    ("structure", re.compile(r"^~(lb|hll):\{[^}]*\}$|^~seen:\{[^}]*\}$")),
    ("windowed set", re.compile(r"^~seen:\{[^}]*\}:w\d+$")),
    ("object", re.compile(r"^~obj:")),
    ("rate limit", re.compile(r"^~rl:")),
    ("stats", re.compile(r"^~stats:")),
    ("tag", re.compile(r"^~tag:\{.*\}$", re.DOTALL)),
    ("tag version", re.compile(r"^~tag:\{.*\}:v$", re.DOTALL)),
    ("entry sidecar", re.compile(r"^\{.*\}:(lease|w|err|v|wait)$", re.DOTALL)),
    ("entry", re.compile(r"^\{.*\}$", re.DOTALL)),
]

found: Counter[str] = Counter()  # kind -> keys audited
unknown: list[str] = []  # a few keys of no known kind, for the summary
violations: list[tuple[str, str, str]] = []  # (test, kind, key) without a TTL


def classify(rest: str) -> str:
    """The kind of a key, given its text after ``prefix:``."""
    for kind, pattern in _KINDS:
        if pattern.search(rest):
            return kind
    return "unknown"


def audit(url: str, prefix: str, test: str) -> None:
    client = raw_client(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if not keys:
            return
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.pttl(k)
        for k, ttl in zip(keys, pipe.execute(), strict=True):
            name = k.decode(errors="replace")
            kind = classify(name[len(prefix) + 1 :])
            found[kind] += 1
            if kind == "unknown" and len(unknown) < 5:
                unknown.append(name[:120])
            if ttl == -1 and kind not in PERMANENT:
                violations.append((test, kind, name[:120]))
    finally:
        client.close()
