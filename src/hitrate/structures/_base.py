"""The twin layer: each structure's verbs are written once, as plan methods (generators
that yield Redis operations, see :mod:`hitrate.ops`), and run by the driver of the cache
that made the structure. A :class:`Synced` structure returns the result; an
:class:`Awaited` one returns an awaitable of it. Nothing else differs, so the sync and
async classes are one class each plus a marker base::

    class Leaderboard(_Leaderboard, Synced): ...        # lb.top(10)
    class AsyncLeaderboard(_Leaderboard, Awaited): ...  # await lb.top(10)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from ..errors import InvalidArgumentError
from ..keys import family_of
from ..ops import Op
from ..plans import Context
from ..policy import COUNTER, Policy, TTLLike, to_policy

__all__ = ["Awaited", "PlanOf", "Structure", "Synced", "calling", "verb", "verb_of"]

P = ParamSpec("P")
T = TypeVar("T")
PlanOf = Generator[Op, Any, T]

#: Items per command when a verb writes many members (Lua's unpack() stops near 8000).
CHUNK = 1000


class Structure:
    """Holds the cache's :class:`~hitrate.plans.Context` and the driver that runs plans."""

    __slots__ = ("_ctx", "_driver")

    def __init__(self, ctx: Context, driver: Any) -> None:
        self._ctx = ctx
        self._driver = driver


class Synced(Structure):
    """Marker: the verbs of this structure run at once and return their result."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _materialize(cls, awaited=False)


class Awaited(Structure):
    """Marker: the verbs of this structure return an awaitable (asyncio)."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _materialize(cls, awaited=True)


def _materialize(cls: type, *, awaited: bool) -> None:
    """Give *cls* a real method for every verb it inherits: a plain function on a Synced
    class, an ``async def`` on an Awaited one. So verbs are ordinary methods to Python
    (``Cache.get(cache, k)``, ``inspect.signature``, ``mock.create_autospec``, pickling a
    bound method) and ``inspect.iscoroutinefunction(acache.get)`` is true."""
    done: set[str] = set()
    for klass in cls.__mro__:
        for name, value in list(vars(klass).items()):
            if name in done:
                continue
            done.add(name)
            if isinstance(value, verb) and name not in cls.__dict__:
                setattr(cls, name, value.method(cls, name, awaited))


class verb(Generic[P, T]):
    """Make a plan method a verb: ``lb.top(10)`` runs the plan ``top`` with the cache's
    driver, so it returns the result on a :class:`Synced` structure and an awaitable on an
    :class:`Awaited` one."""

    def __init__(
        self,
        plan: Callable[Concatenate[Any, P], Generator[Any, Any, T]],
        call: str | Callable[..., Callable[[], Any]] = "",
    ) -> None:
        self.plan = plan
        self._call = call
        params = list(inspect.signature(plan).parameters)
        self._call_at = params.index(call) - 1 if isinstance(call, str) and call else 0
        signature = inspect.signature(plan)
        self._signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        self.__doc__ = plan.__doc__
        self.__name__ = plan.__name__
        self.__qualname__ = plan.__qualname__
        self.__wrapped__ = plan

    def _fn(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The user's function for the plan's CALL (None when the plan makes none)."""
        if callable(self._call):
            return self._call(*args, **kwargs)
        if self._call:
            name, at = self._call, self._call_at
            return kwargs[name] if name in kwargs else args[at] if at < len(args) else None
        return None

    def method(self, owner: type, name: str, awaited: bool) -> Callable[..., Any]:
        """This verb as a real method of *owner* (see :func:`_materialize`)."""
        plan, fn = self.plan, self._fn
        if awaited:

            async def method(obj: Any, *args: Any, **kwargs: Any) -> Any:
                return await obj._driver.run(plan(obj, *args, **kwargs), fn(args, kwargs))

        else:

            def method(obj: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
                return obj._driver.run(plan(obj, *args, **kwargs), fn(args, kwargs))

        signature = inspect.signature(plan)
        returns = signature.return_annotation
        method.__name__ = name
        method.__qualname__ = f"{owner.__qualname__}.{name}"
        method.__module__ = owner.__module__
        method.__doc__ = plan.__doc__
        method.__verb__ = self  # type: ignore[attr-defined]  # the one definition it runs
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=_result_of(returns)
        )
        return method

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> verb[P, T]: ...

    @overload
    def __get__(self, obj: Synced, owner: type | None = None) -> Callable[P, T]: ...

    @overload
    def __get__(self, obj: Awaited, owner: type | None = None) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: Structure | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        plan = self.plan
        run = obj._driver.run
        if callable(self._call):
            make_call = self._call

            def call(*args: Any, **kwargs: Any) -> Any:
                return run(plan(obj, *args, **kwargs), make_call(*args, **kwargs))

        elif self._call:
            name, at = self._call, self._call_at

            def call(*args: Any, **kwargs: Any) -> Any:
                fn = kwargs[name] if name in kwargs else args[at] if at < len(args) else None
                return run(plan(obj, *args, **kwargs), fn)

        else:

            def call(*args: Any, **kwargs: Any) -> Any:
                return run(plan(obj, *args, **kwargs))

        # What functools.wraps would copy, without its cost on every attribute access.
        call.__name__, call.__qualname__, call.__doc__ = (
            self.__name__,
            self.__qualname__,
            self.__doc__,
        )
        call.__wrapped__ = plan  # type: ignore[attr-defined]
        call.__signature__ = self._signature  # type: ignore[attr-defined]
        return call


def verb_of(attr: Any) -> verb[Any, Any] | None:
    """The :class:`verb` a class attribute runs (the one definition shared by the sync
    and the async class), or None when it is not a verb."""
    if isinstance(attr, verb):
        return attr
    found = getattr(attr, "__verb__", None)
    return found if isinstance(found, verb) else None


def _result_of(annotation: Any) -> Any:
    """``PlanOf[int]`` (as text, with postponed annotations) -> ``int``: what the verb
    returns, for its signature."""
    text = annotation if isinstance(annotation, str) else ""
    if text.startswith("PlanOf[") and text.endswith("]"):
        return text[len("PlanOf[") : -1]
    return inspect.Signature.empty if text else annotation


def calling(
    name: str | Callable[..., Callable[[], Any]],
) -> Callable[[Callable[Concatenate[Any, P], Generator[Any, Any, T]]], verb[P, T]]:
    """Like ``@verb``, for a plan that yields CALL: the driver calls the verb's argument
    *name* (a loader, sync or async), or what *name* (a function of the verb's arguments)
    makes of them (``write_through``: ``save(value)``)."""

    def decorate(plan: Callable[Concatenate[Any, P], Generator[Any, Any, T]]) -> verb[P, T]:
        return verb(plan, name)

    return decorate


def text(raw: Any) -> str:
    """A member or name as Redis returned it (bytes) as text."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def integer(value: Any, what: str, *, minimum: int = 0) -> int:
    """*value* as an int of at least *minimum*, or :class:`InvalidArgumentError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise InvalidArgumentError(f"{what} must be >= {minimum}, not {value!r}")
    return value


def structure_policy(ctx: Context, name: str, ttl: TTLLike) -> Policy:
    """The expiry of a leaderboard, set or HyperLogLog: *ttl* when given, else the policy
    configured for the name's family (``policies={"visitors": ...}``), else none. These are
    data, not copies of data, so the cache's ``default_ttl`` does not apply to them."""
    if ttl is not None:
        return to_policy(ttl, COUNTER)
    return ctx.policies.get(family_of(name), COUNTER)


def expiry_ms(ctx: Context, policy: Policy) -> int:
    """Milliseconds until a key written now under *policy* expires (jitter drawn); 0 = none."""
    seconds = policy.draw_ttl(ctx.rng)
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))
