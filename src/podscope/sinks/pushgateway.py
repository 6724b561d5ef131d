"""Push every metric family to a Prometheus Pushgateway, for nodes Prometheus cannot scrape.

Every `interval` seconds the current state is rendered and PUT to
`<url>/metrics/job/<job>/instance/<instance>` (the group is replaced, so series that went away
go away there too). While the gateway is down, pushes fail and the next attempt waits longer
(doubling up to `max_backoff`); nothing is queued, since every push carries the whole current
state, so memory stays flat however long the outage. On shutdown the group can be deleted, so a
node that left does not stay on the gateway forever.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .prometheus import render

log = logging.getLogger("podscope.pushgateway")


def group_path(job: str, labels: dict[str, str]) -> str:
    """The grouping key as a URL path; values with '/' (or empty) use the base64 form."""
    parts = []
    for name, value in [("job", job), *labels.items()]:
        if not value or "/" in value:
            enc = base64.urlsafe_b64encode(value.encode()).decode() or "="
            parts.append(f"{name}@base64/{enc}")
        else:
            parts.append(f"{name}/{urllib.parse.quote(value, safe='')}")
    return "/metrics/" + "/".join(parts)


class PushgatewaySink:
    def __init__(self, url: str, source: Callable[[], Iterable[Metric]], instance: str,
                 job: str = "podscope", interval: float = 15.0, delete_on_exit: bool = True,
                 timeout: float = 10.0, max_backoff: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--pushgateway {url!r}: expected an http:// or https:// URL")
        self.url = url.rstrip("/") + group_path(job, {"instance": instance})
        self.source = source
        self.interval = interval
        self.delete_on_exit = delete_on_exit
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.pushes = {"ok": 0, "error": 0}
        self.last_success = 0.0  # wall clock
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="podscope-push", daemon=True)
        self._thread.start()

    def _request(self, method: str, body: bytes | None = None) -> None:
        req = urllib.request.Request(self.url, data=body, method=method,
                                     headers={"Content-Type": CONTENT_TYPE_LATEST})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()

    def push(self) -> bool:
        try:
            self._request("PUT", render(self.source()))
        except (OSError, urllib.error.HTTPError, ValueError) as e:
            msg = str(e.read().decode(errors="replace").strip() if isinstance(
                e, urllib.error.HTTPError) else e)
            if msg != self.last_error:
                log.warning("push to %s failed: %s (retrying; nothing is queued)", self.url, msg)
            self.last_error = msg
            self.pushes["error"] += 1
            return False
        if self.last_error:
            log.info("pushes to %s work again", self.url)
        self.last_error = ""
        self.pushes["ok"] += 1
        self.last_success = time.time()
        return True

    def _run(self) -> None:
        """Push every interval; after a failure wait twice as long each time, up to four
        intervals (and at most max_backoff), so a gateway that is back is found soon."""
        cap = max(self.interval, min(self.max_backoff, 4 * self.interval))
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval if self.push() else min(wait * 2, cap)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(self.timeout + 1)
            self._thread = None
        if self.delete_on_exit:
            try:
                self._request("DELETE")
            except OSError as e:
                log.warning("deleting the group at %s: %s", self.url, e)
        else:
            self.push()  # the last state

    def metrics(self) -> Iterable[Metric]:
        pushes = CounterMetricFamily("podscope_pushgateway_pushes",
                                     "Pushes to the Pushgateway, by result", labels=["result"])
        for result, n in self.pushes.items():
            pushes.add_metric([result], n)
        yield pushes
        last = GaugeMetricFamily("podscope_pushgateway_last_success_timestamp_seconds",
                                 "When the last push succeeded (Unix time; 0: never)")
        last.add_metric([], self.last_success)
        yield last
