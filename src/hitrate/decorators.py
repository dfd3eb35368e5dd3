"""``@cache.cached(...)``: cache a function's results, typed.

``Cache.cached`` and ``AsyncCache.cached`` are thin calls into this module. A cached
function keeps its parameters, return type, signature (``inspect.signature``) and, for
``async def``, stays a coroutine function (FastAPI and Starlette inspect both). It gains
``.key(*args, **kwargs)`` (the cache key a call uses) and ``.invalidate(*args, **kwargs)``,
both typed with the function's own parameters, so ``mypy --strict`` checks them::

    @cache.cached(key="user:{user_id}")
    def get_user(user_id: int) -> User: ...

    get_user.invalidate(user_id=1)      # int: entries deleted
    get_user.key(1)                     # "user:1"

Methods (first parameter ``self`` or ``cls``) bind like methods: ``repo.order.invalidate(7)``
includes ``repo``, as the call ``repo.order(7)`` does.

``unless=`` (a predicate on the result) serves a result without caching it: the fill
plan gives the lease back without filling (and without an error for waiters), and the
value is not shared with callers waiting in this process.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from .arghash import key_builder
from .codec import codec_type_from_annotation
from .errors import ConfigurationError
from .keys import tags_of
from .policy import Policy, TTLLike

if TYPE_CHECKING:
    from .cache import AsyncCache, Cache

__all__ = [
    "AsyncCacheDecorator",
    "AsyncCachedFunction",
    "CacheDecorator",
    "CachedFunction",
    "KeyArg",
]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
S = TypeVar("S")

KeyArg = str | Callable[..., str] | None
"""``key=`` of ``@cached``: a template over the parameters, or a callable taking them."""


class CachedFunction(Protocol[P, R_co]):
    """A function cached by :meth:`Cache.cached`: call it as the original function."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments uses."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Invalidate the cached result for these arguments; returns entries deleted."""
        ...

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None, /) -> CachedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, Q], R_co], obj: S, owner: type[Any] | None = None, /
    ) -> CachedFunction[Q, R_co]: ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """A coroutine function cached by :meth:`AsyncCache.cached` (or :meth:`Cache.cached`):
    await it as the original; ``invalidate`` is awaited too."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments uses."""
        ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, int]:
        """Invalidate the cached result for these arguments; returns entries deleted."""
        ...

    @overload
    def __get__(
        self, obj: None, owner: type[Any] | None = None, /
    ) -> AsyncCachedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: AsyncCachedFunction[Concatenate[S, Q], R_co],
        obj: S,
        owner: type[Any] | None = None,
        /,
    ) -> AsyncCachedFunction[Q, R_co]: ...


class CacheDecorator(Protocol):
    """What ``Cache.cached(...)`` returns: wraps a plain or an ``async def`` function."""

    @overload
    def __call__(  # type: ignore[overload-overlap]  # a coroutine function is one too
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncCachedFunction[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> CachedFunction[P, R]: ...


class AsyncCacheDecorator(Protocol):
    """What ``AsyncCache.cached(...)`` returns: wraps an ``async def`` function."""

    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncCachedFunction[P, R]: ...


# -- wrapping --------------------------------------------------------------------------------


def _check(ttl: TTLLike, unless: object) -> None:
    if callable(ttl) and not isinstance(ttl, Policy):
        raise ConfigurationError("use @cache.cached() with parentheses")
    if unless is not None and not callable(unless):
        raise ConfigurationError("unless= takes a predicate on the result: unless=lambda r: ...")


def cached_sync(
    cache: Cache,
    ttl: TTLLike,
    key: KeyArg,
    tags: Sequence[str],
    unless: Callable[[Any], object] | None,
    name: str | None,
    value_type: Any = None,
) -> CacheDecorator:
    """``Cache.cached``: plain functions run through ``cache``, ``async def`` through
    ``cache.aio``."""
    _check(ttl, unless)
    tags = tags_of(tags)

    def decorate(func: Callable[..., Any]) -> Any:
        if inspect.iscoroutinefunction(func):
            return _wrap_async(cache.aio, func, ttl, key, tags, unless, name, value_type)
        return _wrap_sync(cache, func, ttl, key, tags, unless, name, value_type)

    return decorate


def cached_async(
    cache: AsyncCache,
    ttl: TTLLike,
    key: KeyArg,
    tags: Sequence[str],
    unless: Callable[[Any], object] | None,
    name: str | None,
    value_type: Any = None,
) -> AsyncCacheDecorator:
    """``AsyncCache.cached``: coroutine functions only."""
    _check(ttl, unless)
    tags = tags_of(tags)

    def decorate(func: Callable[..., Any]) -> Any:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                f"AsyncCache.cached() wraps coroutine functions; {func.__qualname__} is not "
                "one. Use Cache.cached() for plain functions"
            )
        return _wrap_async(cache, func, ttl, key, tags, unless, name, value_type)

    return decorate


_UNSET: Any = object()


class _ValueType:
    """The ``type=`` a cached function's values are decoded with: the one given to
    ``cached(type=...)``, else the function's return annotation, resolved at the first call
    (so names imported under ``TYPE_CHECKING`` or defined later can resolve) and kept."""

    __slots__ = ("func", "value")

    def __init__(self, func: Callable[..., Any], explicit: Any) -> None:
        self.func = func
        self.value = explicit if explicit is not None else _UNSET

    def __call__(self) -> Any:
        value = self.value
        if value is _UNSET:
            value = self.value = codec_type_from_annotation(self.func)
        return value


def _wrap_sync(
    cache: Cache,
    func: Callable[..., Any],
    ttl: TTLLike,
    key: KeyArg,
    tags: tuple[str, ...],
    unless: Callable[[Any], object] | None,
    name: str | None,
    value_type: Any = None,
) -> Any:
    make_key = key_builder(func, key, name)
    get_or_fetch = cache.get_or_fetch
    decode_as = _ValueType(func, value_type)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return get_or_fetch(
            make_key(*args, **kwargs),
            lambda: func(*args, **kwargs),
            ttl,
            tags,
            unless=unless,
            type=decode_as(),
        )

    _attach(wrapper, make_key, cache.invalidate)
    return _for_methods(wrapper, func, is_async=False)


def _wrap_async(
    cache: AsyncCache,
    func: Callable[..., Any],
    ttl: TTLLike,
    key: KeyArg,
    tags: tuple[str, ...],
    unless: Callable[[Any], object] | None,
    name: str | None,
    value_type: Any = None,
) -> Any:
    make_key = key_builder(func, key, name)
    get_or_fetch = cache.get_or_fetch
    decode_as = _ValueType(func, value_type)

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await get_or_fetch(
            make_key(*args, **kwargs),
            lambda: func(*args, **kwargs),
            ttl,
            tags,
            unless=unless,
            type=decode_as(),
        )

    _attach(wrapper, make_key, cache.invalidate)
    return _for_methods(wrapper, func, is_async=True)


def _attach(wrapper: Any, make_key: Callable[..., str], invalidate: Callable[..., Any]) -> None:
    wrapper.key = make_key

    def invalidate_call(*args: Any, **kwargs: Any) -> Any:
        return invalidate(make_key(*args, **kwargs))

    invalidate_call.__doc__ = "Invalidate the cached result for these arguments."
    wrapper.invalidate = invalidate_call


# -- methods ---------------------------------------------------------------------------------


class _CachedMethod:
    """A cached method: ``obj.method`` is a function bound to ``obj`` whose ``.key(x)`` and
    ``.invalidate(x)`` include ``obj``, as ``obj.method(x)`` does (a plain function
    attribute would not see ``obj``). ``Cls.method`` is the cached function itself.

    Bound methods are real functions (``async def`` for coroutine functions), so
    ``inspect.iscoroutinefunction`` and ``inspect.signature`` (without ``self``) see them
    as they would see the original's bound method.
    """

    def __init__(self, wrapper: Any, is_async: bool) -> None:
        self._wrapper = wrapper
        self._is_async = is_async
        sig = inspect.signature(wrapper)
        self._bound_signature = sig.replace(parameters=list(sig.parameters.values())[1:])
        functools.update_wrapper(self, wrapper)
        mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
        if is_async and mark is not None:
            mark(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapper(*args, **kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self._wrapper
        wrapper = self._wrapper
        bound: Any
        if self._is_async:

            async def bound(*args: Any, **kwargs: Any) -> Any:
                return await wrapper(obj, *args, **kwargs)
        else:

            def bound(*args: Any, **kwargs: Any) -> Any:
                return wrapper(obj, *args, **kwargs)

        bound.__name__ = wrapper.__name__
        bound.__qualname__ = wrapper.__qualname__
        bound.__doc__ = wrapper.__doc__
        bound.__module__ = wrapper.__module__
        bound.__signature__ = self._bound_signature
        bound.__self__ = obj
        bound.key = functools.partial(wrapper.key, obj)
        bound.invalidate = functools.partial(wrapper.invalidate, obj)
        return bound


def _for_methods(wrapper: Any, func: Any, *, is_async: bool) -> Any:
    """Functions whose first parameter is ``self``/``cls`` get method-aware helpers."""
    params = list(inspect.signature(func).parameters)
    if params and params[0] in ("self", "cls"):
        return _CachedMethod(wrapper, is_async)
    return wrapper
