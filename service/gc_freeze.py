"""Short garbage-collector pauses: the objects that exist when the service starts are frozen.

A full (generation 2) collection walks every tracked object while holding the GIL, so every thread,
the event loop included, waits until it ends. Once torch, timm, FAISS and FastAPI are imported that is
about 500,000 objects, and one full pass took 0.5-1.0 s on 2 EPYC cores: the event loop stalled for
that long in the middle of a model swap (the allocations of loading a model trigger such passes), and
`/health` with it. Those objects are modules, classes and functions that live as long as the process.
`gc.freeze()` moves them to the permanent generation, which collections skip; a full pass then walks
only what was made since (the models, the gallery, requests): about 15 ms on the same machine.

Done once per process, at the first start, before the model and the gallery open, so that a model
swapped out later is still collected.
"""

from __future__ import annotations

import gc
import logging

LOG = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect, then freeze every tracked object; returns how many were frozen (0 when already done)."""
    if gc.get_freeze_count():
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    LOG.info("froze %d startup objects: full garbage collections skip them", frozen)
    return frozen
