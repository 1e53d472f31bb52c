"""What the console's browser tests share, in Chromium and in Firefox: a real `cgd serve` on 127.0.0.1
with a write and a read key (one per test module), the caltech101 photos they add, the screenshot
folder, and the limits of their waits.

The waits are conditions with generous bounds (a loaded 2-core machine runs a 2-epoch job several
times slower than a quiet one); none is a sleep that the test's result depends on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Photo, Server, start_server

WRITE_KEY = "console-write-key"
READ_KEY = "console-read-key"
LABELS = ("sunflower", "stop_sign", "soccer_ball")
PER_LABEL = 4
HOSTILE_LABEL = "<img src=x onerror=alert(1)>"
HOSTILE_NOTE = "<script>alert(2)</script>"
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}
UI_TIMEOUT_S = 60  # a page's answer (a search, a batch of uploads) on a loaded machine
TRAIN_TIMEOUT_S = 480  # the tiny job, queued to finished, on a loaded machine
SERVER_ERROR = re.compile(r'"[A-Z]+ [^"]*" 5\d\d\b.*')  # an access-log line of a 5xx


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per module; at teardown its access log must hold no 5xx, whoever asked."""
    root = tmp_path_factory.mktemp("console")
    server = start_server(root / "data", root / "server.log",
                          {"CGD_API_KEY": WRITE_KEY, "CGD_READ_API_KEY": READ_KEY})
    yield server
    server.stop()
    log = server.log.read_text(errors="replace")
    assert '" 200' in log, "the server's access log is on"  # so that the check below can fail
    assert not SERVER_ERROR.findall(log), SERVER_ERROR.findall(log)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: $CONSOLE_SCREENSHOTS, else a temporary folder (never the repository)."""
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def photos(caltech_photos: list[Photo]) -> dict[str, list[Photo]]:
    """`PER_LABEL` real photos of each of `LABELS`."""
    return {label: [p for p in caltech_photos if p.label == label][:PER_LABEL] for label in LABELS}


def phone_views(item_id: int) -> list[tuple[str, str, str]]:
    """`(hash, heading, an element shown once the view has its data)` for every view but search (the
    tests search there first), with the item view of `item_id`."""
    return [("#/gallery", "Gallery", "[data-testid=gallery-grid] [data-testid=card]"),
            (f"#/gallery/item/{item_id}", f"Item #{item_id}", "[data-testid=item-label]"),
            ("#/training", "Training", "[data-testid=train-form]"),
            ("#/models", "Models", "[data-testid=model-row]"),
            ("#/health", "Health", "[data-testid=health-facts] dt")]


# Nothing of the page is wider than the screen (no sideways scrolling); the elements that stick out.
FITS_THE_WIDTH = "document.documentElement.scrollWidth <= window.innerWidth"
STICKING_OUT = ("[...document.querySelectorAll('body *')]"
                ".filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)"
                ".map((e) => e.outerHTML.slice(0, 80))")


def gallery_counts_text(items: int, labels: int) -> str:
    """The gallery view's counts line."""
    return f"{items} items, {labels} labels, 0 without a label"


def batch_report(photos: list[Photo]) -> str:
    """The report line of one batch of `photos` added at once."""
    files = f"{len(photos)} file{'' if len(photos) == 1 else 's'}"
    return f"batch 1 of 1 ({files}, {photos[0].name}…): {len(photos)} added"
