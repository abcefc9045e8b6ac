"""Progress of a running flow: one panel updated in place on a terminal (rich), one plain line per interval
otherwise (CI logs, pipes), and optionally the same figures for Prometheus (``--metrics-port``).

The figures: records/s, in flight against the window, records committed, lag from the end offsets, retries,
dead letters, and what the source is doing, in words ("waiting for partition assignment", "draining", ...).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress", "serve_metrics"]


class Progress:
    def __init__(self, flow: Any, window: int, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.flow = flow
        self.window = window
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._last_in = 0
        self._last_t = time.monotonic()
        self._rate = 0.0
        self._panel: Any = None

    def sample(self) -> dict[str, Any]:
        m = self.flow.metrics.snapshot()
        now = time.monotonic()
        records = m.get("records_in", 0)
        self._rate = (records - self._last_in) / max(now - self._last_t, 1e-9)
        self._last_in, self._last_t = records, now
        return m

    def line(self, m: dict[str, Any] | None = None) -> str:
        m = m or self.sample()
        return (f"[{m['elapsed_s']:7.1f}s] in {m.get('records_in', 0):>7} ({self._rate:7.0f}/s)  in-flight "
                f"{m.get('in_flight', 0):>4}/{self.window}  committed {m.get('committed', 0):>7}  lag "
                f"{m.get('lag', 0):>6}  retries {m.get('retries', 0):>4}  dead-lettered {m.get('dead_lettered', 0):>3}"
                f"  nacked {m.get('nacked', 0):>3}  {_state(m)}")

    def table(self, m: dict[str, Any]) -> Any:
        from rich.table import Table

        grid = Table(title=f"rxcqrs  [{m['elapsed_s']:.0f}s]  {_state(m)}", show_header=False, expand=False)
        grid.add_column(justify="left")
        grid.add_column(justify="right")
        rows = [("records/s", f"{self._rate:,.0f}"), ("records in", f"{m.get('records_in', 0):,}"),
                ("in flight / window", f"{m.get('in_flight', 0):,} / {self.window:,}"),
                ("committed (records)", f"{m.get('committed', 0):,}"), ("lag (records)", f"{m.get('lag', 0):,}"),
                ("retries", f"{m.get('retries', 0):,}"), ("dead-lettered", f"{m.get('dead_lettered', 0):,}"),
                ("unknown outcomes", f"{m.get('cassandra_unknown', 0):,}"), ("nacked", f"{m.get('nacked', 0):,}")]
        for name, value in rows:
            grid.add_row(name, value)
        return grid

    def show(self) -> None:
        """One update: the panel refreshed in place, or one more line."""
        m = self.sample()
        if not self.live:
            print(self.line(m), file=self.stream, flush=True)
            return
        if self._panel is None:
            from rich.console import Console
            from rich.live import Live

            self._panel = Live(self.table(m), console=Console(file=self.stream), auto_refresh=False)
            self._panel.start()
        self._panel.update(self.table(m), refresh=True)

    def message(self, text: str) -> None:
        if self._panel is not None:
            self._panel.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._panel is not None:
            self.show()
            self._panel.stop()
            self._panel = None
        else:
            self.show()


def _state(m: dict[str, Any]) -> str:
    state = str(m.get("state", ""))
    if state == "running" and m.get("retries", 0) and m.get("in_flight", 0):
        return "running (retrying: see retries)"
    return state


def serve_metrics(port: int, source: Any) -> Any:
    """Serve the flow's figures for Prometheus on ``port`` (per partition where they are per partition);
    returns the HTTP server (``server.shutdown()``). Needs ``pip install rxcqrs[metrics]``."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Any:
            m = source.metrics.snapshot()
            for name in ("records_in", "committed", "retries", "dead_lettered", "nacked", "cassandra_unknown",
                         "consumer_restarts", "rewinds"):
                yield CounterMetricFamily(f"rxcqrs_{name}", f"rxcqrs {name.replace('_', ' ')}",
                                          value=m.get(name, 0) or 0)
            yield GaugeMetricFamily("rxcqrs_in_flight", "records emitted and not settled", value=m.get("in_flight", 0))
            lag = GaugeMetricFamily("rxcqrs_lag", "records behind the end offset", labels=["topic", "partition"])
            for tp, value in sorted(source.lag().items()):
                lag.add_metric([tp.topic, str(tp.partition)], value)
            yield lag
            backlog = source.backlog()
            if backlog is not None:
                yield GaugeMetricFamily("rxcqrs_backlog", "records of the topic not done by the group", value=backlog)

    registry = CollectorRegistry()
    registry.register(Collector())
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server
