"""`PixelBudget`: how many decoded image pixels the whole service holds at once.

A request takes the pixels of all its images (read from their headers) before decoding any of
them, and gives them back when it ends; when they do not fit, it is refused at once with
`Overloaded` (503, Retry-After) instead of waiting with its uploads in memory. So decoded images
never hold more than about 4 bytes x `capacity` (Pillow keeps RGB at 4 bytes a pixel), whatever
the clients send. Thread-safe: uploads take their pixels on the executor, between reading the headers
and decoding, in the same job.
"""

from __future__ import annotations

import threading

from service.errors import Overloaded


class PixelBudget:
    """`take(pixels)` or 503; `give_back(pixels)` when the images are no longer needed."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, got {capacity}")
        self.capacity = capacity
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Pixels taken and not given back."""
        return self._held

    def take(self, pixels: int) -> None:
        """Count `pixels` as decoded, or raise `Overloaded` when they do not fit now."""
        with self._lock:
            if pixels > self.capacity - self._held:
                raise Overloaded(f"the service is decoding {self._held} pixels of images already; "
                                 f"{pixels} more do not fit in its budget of {self.capacity}; retry shortly")
            self._held += pixels

    def give_back(self, pixels: int) -> None:
        with self._lock:
            self._held = max(0, self._held - pixels)
