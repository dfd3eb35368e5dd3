"""The HTTP response cache's decisions (hitrate.contrib.fastapi.policy), without a server."""

from __future__ import annotations

import pytest

from hitrate import ConfigurationError
from hitrate.contrib.fastapi.policy import (
    HttpRule,
    cache_control,
    http_cache,
    not_modified,
    request_key,
    stored,
    strong_etag,
)


def scope(path: str = "/p", query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None):  # type: ignore[no-untyped-def]
    return {"path": path, "query_string": query, "headers": headers or [], "root_path": ""}


def test_cache_control_parsing() -> None:
    assert cache_control('public, max-age=60, s-maxage="30"') == {
        "public": None,
        "max-age": 60,
        "s-maxage": 30,
    }
    assert cache_control("No-Store") == {"no-store": None}
    assert cache_control("max-age=soon") == {"max-age": 0}
    assert cache_control(None) == {}


def test_key_normalises_query_and_varies() -> None:
    rule = HttpRule(vary=("Accept-Language",))
    a = request_key(scope(query=b"b=2&a=1&a=0&empty="), rule)
    assert a == request_key(scope(query=b"a=0&empty=&a=1&b=2"), rule)
    assert a != request_key(scope(query=b"a=1&b=2"), rule)  # a blank value is a value
    fr = request_key(scope(headers=[(b"accept-language", b"fr")]), rule)
    assert fr != request_key(scope(headers=[(b"accept-language", b"en")]), rule)
    assert request_key(scope(), HttpRule()) == request_key(
        scope(headers=[(b"accept-language", b"fr")]), HttpRule()
    )  # not varied on: one entry
    assert a.startswith("http:")


def test_etags_and_if_none_match() -> None:
    tag = strong_etag(b"body")
    assert tag == strong_etag(b"body") != strong_etag(b"other")
    assert not_modified(tag, tag) and not_modified(f'"x", {tag}', tag)
    assert not_modified(f"W/{tag}", tag) and not_modified("*", tag)
    assert not not_modified('"x"', tag) and not not_modified(None, tag)


@pytest.mark.parametrize(
    ("status", "headers", "why"),
    [
        (404, [], "status 404"),
        (200, [(b"set-cookie", b"a=b")], "Set-Cookie"),
        (200, [(b"cache-control", b"private")], "Cache-Control: private"),
        (200, [(b"cache-control", b"no-store")], "Cache-Control: no-store"),
        (200, [(b"cache-control", b"no-cache")], "Cache-Control: no-cache"),
        (200, [(b"cache-control", b"max-age=0")], "max-age=0"),
        (200, [(b"vary", b"Cookie")], "Vary: Cookie (name them in vary=)"),
        (200, [(b"vary", b"*")], "Vary: * (name them in vary=)"),
    ],
)
def test_what_is_not_stored(status: int, headers: list[tuple[bytes, bytes]], why: str) -> None:
    assert stored(HttpRule(), status, headers, b"x", 60) == (None, why)


def test_what_is_stored() -> None:
    entry, _ = stored(HttpRule(vary=("accept",)), 200, [(b"vary", b"Accept")], b"x", 60)
    assert entry is not None and entry["s"] == 200 and entry["exp"] is None
    assert ["etag", strong_etag(b"x")] in entry["h"]
    short, _ = stored(HttpRule(), 200, [(b"cache-control", b"max-age=5")], b"x", 60)
    assert short is not None and short["exp"] == pytest.approx(short["t"] + 5)
    mine, _ = stored(HttpRule(), 200, [(b"etag", b'"v1"')], b"x", 60)
    assert mine is not None and [h for h in mine["h"] if h[0] == "etag"] == [["etag", '"v1"']]
    cookie = HttpRule(set_cookie=True, statuses=frozenset({404}))
    assert stored(cookie, 404, [(b"set-cookie", b"a")], b"", 60)[0] is not None
    assert stored(HttpRule(max_size=1), 200, [], b"xx", 60) == (None, "body over 1 bytes")


def test_bad_rules() -> None:
    with pytest.raises(ConfigurationError, match="parentheses"):
        http_cache(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lists of names"):
        HttpRule(tags="products")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a path parameter"):
        HttpRule(tags=("p:{pid}",)).tags_for({"id": 1})
    assert HttpRule(tags=("p:{id}",)).tags_for({"id": "a:b"}) == ["p:a%3Ab"]
