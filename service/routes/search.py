"""`/search`, `/search/batch` and `/embed`: images in, nearest gallery items or vectors out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from index import MetadataFilter
from service.deps import RuntimeDep, SettingsDep, WorkerDep
from service.routes.gallery import search_hit
from service.schemas import BatchSearchResponse, EmbedResponse, SearchResponse
from service.search_batcher import SearchOptions
from service.security import require_read_key
from service.timing import Stopwatch
from service.uploads import UploadsDep, parse_json_object

router = APIRouter(tags=["search"], dependencies=[Depends(require_read_key)])

KForm = Annotated[int | None, Form(ge=1, description="how many results (default and bound: settings)")]
# FastAPI reads an empty form field as an absent one: `label=` searches every item.
LabelForm = Annotated[str | None, Form(description="only items with this label")]
MetadataForm = Annotated[str | None,
                         Form(description='JSON object; equality on each key, e.g. {"shop": "x"}')]
QeNForm = Annotated[int | None, Form(ge=0, le=100, description="query expansion: neighbours added (0 = off; "
                                    "default: the model's own, chosen on validation when it was trained)")]
QeAlphaForm = Annotated[float, Form(ge=0, le=100, description="query expansion: similarity exponent")]


def parse_filter(metadata: str | None) -> MetadataFilter | None:
    """The metadata form field as the one filter object of the search (422 when it is not one)."""
    return MetadataFilter.of(parse_json_object(metadata, "metadata"))


@router.post("/search", response_model=SearchResponse)
async def search(
    runtime: RuntimeDep,
    settings: SettingsDep,
    reader: UploadsDep,
    file: Annotated[UploadFile, File(description="the query image")],
    k: KForm = None,
    label: LabelForm = None,
    metadata: MetadataForm = None,
    qe_n: QeNForm = None,
    qe_alpha: QeAlphaForm = 3.0,
) -> SearchResponse:
    """The top-k gallery items for one image, best first (score: cosine similarity)."""
    clock = Stopwatch()
    k = settings.bounded_k(k)
    terms = parse_filter(metadata)  # a bad filter costs no decoding and no forward pass
    (upload,) = await reader.read([file])
    embedded = await runtime.worker.embed([upload.image])
    qe_n = embedded.qe_n if qe_n is None else qe_n
    options = SearchOptions(embedded.version, label, terms, qe_n, qe_alpha)
    hits = await runtime.searcher.search(embedded.vectors[0], k, options)
    return SearchResponse(results=[search_hit(h) for h in hits], model_version=embedded.version,
                          took_ms=clock.elapsed_ms())


@router.post("/search/batch", response_model=BatchSearchResponse)
async def search_batch(
    runtime: RuntimeDep,
    settings: SettingsDep,
    reader: UploadsDep,
    files: Annotated[list[UploadFile], File(description="query images")],
    k: KForm = None,
    label: LabelForm = None,
    metadata: MetadataForm = None,
    qe_n: QeNForm = None,
    qe_alpha: QeAlphaForm = 3.0,
) -> BatchSearchResponse:
    """One result list per uploaded image, in upload order, from one FAISS call."""
    clock = Stopwatch()
    k = settings.bounded_k(k)
    terms = parse_filter(metadata)
    uploads = await reader.read(files)
    embedded = await runtime.worker.embed([u.image for u in uploads])
    qe_n = embedded.qe_n if qe_n is None else qe_n
    _, results = await runtime.gateway.search(embedded.vectors, k, label=label, metadata=terms, qe_n=qe_n,
                                              qe_alpha=qe_alpha, version=embedded.version)
    return BatchSearchResponse(results=[[search_hit(h) for h in hits] for hits in results],
                               model_version=embedded.version, took_ms=clock.elapsed_ms())


@router.post("/embed", response_model=EmbedResponse)
async def embed(
    worker: WorkerDep,
    reader: UploadsDep,
    files: Annotated[list[UploadFile], File(description="images to embed")],
) -> EmbedResponse:
    """The embedding (float32 unit vector) of each image, and the model version."""
    uploads = await reader.read(files)
    embedded = await worker.embed([u.image for u in uploads])
    return EmbedResponse(embeddings=embedded.vectors.tolist(), dim=int(embedded.vectors.shape[1]),
                         model_version=embedded.version)
