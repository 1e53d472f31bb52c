"""Fixtures shared by every test folder: the real data sets beside the clone."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _data_set(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "labels.csv").is_file():
        pytest.skip(f"real data set {name!r} not found at {root} (expected ../shared/data beside the clone)")
    return root


@pytest.fixture(scope="session")
def caltech_dir() -> Path:
    """../shared/data/caltech101: real photos, 101 classes, `labels.csv`."""
    return _data_set("caltech101")


@pytest.fixture(scope="session")
def gtsrb_dir() -> Path:
    """../shared/data/gtsrb32: real 32 px traffic signs, 43 classes, `labels.csv`."""
    return _data_set("gtsrb32")
