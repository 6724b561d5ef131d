"""Route templates and redaction: bounded cardinality, no secrets in any export."""

from __future__ import annotations

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


def _is_id(seg: str) -> bool:
    if _NUM.match(seg) or _UUID.match(seg):
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
    segs = path.split("/")
    return "/".join("{id}" if s and _is_id(s) else s for s in segs) or "/"


def redact_target(target: str) -> str:
    """Keep the path and the query's names; every query value is replaced."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
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
