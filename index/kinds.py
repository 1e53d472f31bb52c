"""Index kinds: configuration names parsed once into an `IndexSpec` that yields FAISS factory strings.

Aliases (case-insensitive; nlist and PQ width are chosen from the gallery size and dimension):

| alias     | factory string                        | memory / vector (d=1536)  | removal     |
| --------- | ------------------------------------- | ------------------------- | ----------- |
| Flat      | Flat (exact, default)                 | 4d = 6144 B               | physical    |
| SQfp16    | SQfp16 (exhaustive, float16 codes)    | 2d = 3072 B               | physical    |
| SQ8       | SQ8 (exhaustive, 8-bit codes)         | d = 1536 B                | physical    |
| HNSW      | HNSW32                                | 4d + ~300 B graph         | tombstones  |
| HNSW-SQ8  | HNSW32,SQ8                            | d + ~300 B graph          | tombstones  |
| IVF-Flat  | IVF{nlist},Flat                       | 4d                        | tombstones  |
| IVF-SQ8   | IVF{nlist},SQ8                        | d                         | tombstones  |
| IVF-PQ    | IVF{nlist},PQ{d/4}x4fs,Refine(SQ8)    | d/8 + d                   | tombstones  |

Any other string is used as a FAISS factory string (metric inner product, wrapped in IDMap2).

`prefix:<kind>` (e.g. `prefix:HNSW-SQ8`) is coarse-to-fine (`index.prefix_index`): `<kind>` indexes only
the first branch of CGD's concatenated embedding, renormalised, and its top `k * factor` candidates are
re-ranked exactly on the full vectors (float16, read from a file on disk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss

from index.errors import InvalidIndexKind

MIN_TRAINING_POINTS = 1000  # trained kinds search exactly until this many vectors (and 39 per centroid) exist
_CENTROID_POINTS = 39  # FAISS warns below 39 training points per k-means centroid
DEFAULT_EF_SEARCH = 128
DEFAULT_K_FACTOR = 10
PREFIX = "prefix:"

_ALIASES = {  # lower-case alias -> (canonical name, factory template)
    "flat": ("Flat", "Flat"),
    "sqfp16": ("SQfp16", "SQfp16"),
    "sq8": ("SQ8", "SQ8"),
    "hnsw": ("HNSW", "HNSW32"),
    "hnsw-sq8": ("HNSW-SQ8", "HNSW32,SQ8"),
    "ivf-flat": ("IVF-Flat", "IVF{nlist},Flat"),
    "ivf-sq8": ("IVF-SQ8", "IVF{nlist},SQ8"),
    "ivf-pq": ("IVF-PQ", "IVF{nlist},PQ{pq_m}x4fs,Refine(SQ8)"),
}


def auto_nlist(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest sqrt(n), in [16, 65536]."""
    return int(min(max(2 ** round(math.log2(math.sqrt(max(n, 1)))), 16), 65536))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query when not configured: 1/16 of them, at least 16."""
    return min(nlist, max(16, nlist // 16))


def _pq_m(dim: int) -> int:
    """PQ sub-quantizers: about one per 4 dimensions (4-bit codes, fast scan), a divisor of `dim`."""
    return max(m for m in range(1, max(dim // 4, 1) + 1) if dim % m == 0)


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index kind. `name` is the canonical configuration name stored with snapshots.
    `prefix`: coarse-to-fine over the first branch (`k_factor` is then the re-ranking factor)."""

    name: str
    template: str
    nprobe: int | None = None
    ef_search: int | None = None
    k_factor: int | None = None
    prefix: bool = False

    @classmethod
    def parse(cls, kind: str, *, nprobe: int | None = None, ef_search: int | None = None,
              k_factor: int | None = None) -> IndexSpec:
        if not isinstance(kind, str) or not kind.strip():
            raise InvalidIndexKind("index kind must be a non-empty string")
        for value, what in ((nprobe, "nprobe"), (ef_search, "ef_search"), (k_factor, "k_factor")):
            if value is not None and value < 1:
                raise InvalidIndexKind(f"{what} must be >= 1, got {value}")
        kind = kind.strip()
        prefix = kind.lower().startswith(PREFIX)
        if prefix:
            kind = kind[len(PREFIX):].strip()
            if not kind or kind.lower().startswith(PREFIX):
                raise InvalidIndexKind(f"{PREFIX}<kind> needs one coarse kind, e.g. {PREFIX}HNSW-SQ8")
        name, template = _ALIASES.get(kind.lower(), (kind, kind))
        if "IDMAP" in template.upper() or ("{" in template and kind.lower() not in _ALIASES):
            raise InvalidIndexKind(f"invalid index kind {kind!r} (the gallery adds IDMap2 itself)")
        return cls(PREFIX + name if prefix else name, template, nprobe, ef_search, k_factor, prefix)

    def coarse(self) -> IndexSpec:
        """The kind a `prefix:` kind searches its prefixes with (its re-ranking factor is not passed on)."""
        return IndexSpec(self.name.removeprefix(PREFIX), self.template, self.nprobe, self.ef_search)

    def validate(self, dim: int) -> None:
        """InvalidIndexKind unless FAISS can build this kind for `dim`-d vectors."""
        self.create(dim, MIN_TRAINING_POINTS)

    @staticmethod
    def _check_factory(factory: str, dim: int) -> faiss.Index:
        try:
            return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InvalidIndexKind(f"FAISS cannot build {factory!r} for {dim}-d vectors: {exc}") from exc

    def factory(self, dim: int, n: int) -> str:
        """The factory string for `n` vectors of width `dim`."""
        return self.template.format(nlist=auto_nlist(n), pq_m=_pq_m(dim))

    def create(self, dim: int, n: int) -> faiss.Index:
        """A new, possibly untrained, inner-product index (not yet wrapped in IDMap2)."""
        return self._check_factory(self.factory(dim, n), dim)


def training_points_needed(index: faiss.Index) -> int:
    """How many vectors an untrained index needs before it is trained (0 if it needs no training)."""
    if index.is_trained:
        return 0
    needed = MIN_TRAINING_POINTS
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexRefine):
        base = faiss.downcast_index(base.base_index)
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        needed = max(needed, _CENTROID_POINTS * ivf.nlist)
        base = faiss.downcast_index(ivf)
    pq = getattr(base, "pq", None)
    if pq is not None:
        needed = max(needed, _CENTROID_POINTS * pq.ksub)
    return needed
