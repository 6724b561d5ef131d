"""Route templates and redaction: bounded cardinality, no secrets in any export."""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable

OTHER = "__other__"
REDACTED = "<redacted>"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_NUM = re.compile(r"^[+-]?\d+([.,]\d+)?$")
_HEX = re.compile(r"^(0x)?[0-9a-fA-F]{8,}$")
_B64 = re.compile(r"^[A-Za-z0-9_\-+=~.]{16,}$")
_SECRET_NAME = re.compile(r"(auth|token|secret|passw|pwd|api[-_]?key|session|signature|credential|"
                          r"cookie|jwt|bearer)", re.IGNORECASE)
ALWAYS_REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                                     "x-api-key", "x-auth-token"})


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def _entropy(seg: str) -> float:
    """Shannon entropy, bits per character."""
    n = len(seg)
    return -sum(c / n * math.log2(c / n) for c in (seg.count(ch) for ch in set(seg)))


def _is_token(seg: str) -> bool:
    """A random-looking segment of letters (an invite code, a session id): long, upper and
    lower case in similar measure, many different characters. CamelCase words have few upper
    case letters; words in one case are left alone."""
    if len(seg) < 12 or not seg.isalnum():
        return False
    upper = sum(c.isupper() for c in seg)
    return 0.3 <= upper / len(seg) <= 0.7 and _entropy(seg) >= 3.5


def _is_secret(seg: str) -> bool:
    """What must not leave the node even in a record: an e-mail address, a token."""
    return bool(_EMAIL.match(seg)) or _is_token(seg) or (_B64.match(seg) is not None and
                                                          _is_id(seg))


def _is_id(seg: str) -> bool:
    if _NUM.match(seg) or _UUID.match(seg) or _EMAIL.match(seg) or _is_token(seg):
        return True
    if _HEX.match(seg) and any(c.isdigit() for c in seg):
        return True
    if _B64.match(seg):
        # long tokens: mixed classes (letters and digits, or case changes with digits/symbols)
        has_digit = any(c.isdigit() for c in seg)
        has_alpha = any(c.isalpha() for c in seg)
        return has_digit and has_alpha
    return False


def template_path(target: str) -> str:
    """'/users/123/orders/9f1c...?x=1' -> '/users/{id}/orders/{id}' (query dropped)."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        # absolute-form (proxies) or authority/asterisk form
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        else:
            return path if path == "*" else "/"
    # path parameters (";jsessionid=...") are never part of a route
    segs = [seg.split(";", 1)[0] for seg in path.split("/")]
    return "/".join("{id}" if s and _is_id(s) else s for s in segs) or "/"


def redact_target(target: str) -> str:
    """Keep the path and the query's names: every query value and path parameter value is
    replaced, and so is a path segment that is an e-mail address or a token."""
    path, sep, query = target.partition("?")
    if ";" in path or "@" in path or any(_is_secret(s) for s in path.split("/") if s):
        segs = []
        for seg in path.split("/"):
            base, semi, params = seg.partition(";")
            base = REDACTED if base and _is_secret(base) else base
            if semi:
                base += ";" + ";".join(
                    f"{name}={REDACTED}" if eq else name
                    for name, eq, _v in (p.partition("=") for p in params.split(";")))
            segs.append(base)
        path = "/".join(segs)
    if not sep:
        return path
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={REDACTED}" if eq else name)
    return path + "?" + "&".join(parts)


def redact_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        low = name.lower()
        if low in ALWAYS_REDACTED_HEADERS or _SECRET_NAME.search(low):
            out.append((name, REDACTED))
        else:
            out.append((name, value))
    return out


class RouteBudget:
    """At most `limit` distinct routes per owner (pod); the rest become '__other__', counted."""

    def __init__(self, limit: int = 100, owners: int = 10_000):
        self.limit = limit
        self.max_owners = owners
        self._routes: OrderedDict[object, set[str]] = OrderedDict()
        self.overflow: dict[object, int] = {}
        self._lock = threading.Lock()

    def forget(self, gone: Callable[[object], bool]) -> None:
        """Drop the owners (pods gone for good) that `gone` names."""
        with self._lock:
            for owner in [o for o in self._routes if gone(o)]:
                del self._routes[owner]
            for owner in [o for o in self.overflow if gone(o)]:
                del self.overflow[owner]

    def route(self, owner: object, route: str) -> str:
        with self._lock:
            seen = self._routes.get(owner)
            if seen is None:
                if len(self._routes) >= self.max_owners:
                    self._routes.popitem(last=False)
                seen = self._routes[owner] = set()
            else:
                self._routes.move_to_end(owner)
            if route in seen:
                return route
            if len(seen) < self.limit:
                seen.add(route)
                return route
            self.overflow[owner] = self.overflow.get(owner, 0) + 1
            return OTHER
