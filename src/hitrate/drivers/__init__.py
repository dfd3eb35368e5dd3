"""Run plans against Redis: one driver for redis-py's sync client, one for its asyncio client.

The drivers are the only place that talks to redis-py. They translate its errors (once,
via :func:`hitrate.errors.translate`), keep the circuit breaker, run Lua by EVALSHA with
EVAL on NOSCRIPT, coalesce concurrent fills of one key inside the process, deliver the
invalidations owed since an outage before anything else is sent, and run background
refreshes (bounded, one per key at a time, with the caller's ``contextvars``).

However a step ends - a reply, a Redis error, the loader raising, or an interruption
(``asyncio`` cancellation, ``KeyboardInterrupt``, a gevent timeout) - the driver throws
what happened into the plan, so the plan can give its lease back and close its write
window before the exception goes on to the caller.
"""

from ._common import MAX_BACKGROUND
from .aio import AsyncDriver
from .sync import SyncDriver

__all__ = ["MAX_BACKGROUND", "AsyncDriver", "SyncDriver"]
