"""A stopwatch for the `took_ms` field of responses."""

from __future__ import annotations

import time


class Stopwatch:
    """Milliseconds since creation, from a monotonic clock."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000.0, 2)
