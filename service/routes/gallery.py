"""`/gallery`: add, list, read, update and delete gallery items; search by a stored item."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Response, UploadFile, status

from index import Hit, Item, NewItem
from index.blobs import image_sha256
from service.deps import GatewayDep, RuntimeDep, SettingsDep, ThumbnailsDep, WorkerDep
from service.errors import InvalidParameter, NotFound
from service.schemas import (
    MAX_LABEL_LENGTH,
    CompactionAccepted,
    ItemPage,
    ItemPublic,
    ItemsCreated,
    ItemUpdate,
    LabelCount,
    LabelCounts,
    SearchHit,
    SearchResponse,
)
from service.security import require_read_key, require_write_key
from service.timing import Stopwatch
from service.uploads import UploadsDep, parse_metadata, per_file

router = APIRouter(prefix="/gallery", tags=["gallery"])
WriteKey = Depends(require_write_key)
ReadKey = Depends(require_read_key)
MAX_INT64 = 2**63 - 1  # SQLite row ids and offsets are signed 64-bit integers
ItemId = Annotated[int, Path(ge=1, le=MAX_INT64, description="the item's id")]
ExternalId = Annotated[str, Path(description="the client's id of the item (may contain '/')")]


def item_public(item: Item) -> ItemPublic:
    return ItemPublic(id=item.id, external_id=item.external_id, label=item.label, metadata=item.metadata,
                      sha256=item.sha256, has_image=item.has_image, created_at=item.created_at)


def search_hit(hit: Hit) -> SearchHit:
    item = hit.item
    return SearchHit(id=item.id, external_id=item.external_id, score=hit.score, label=item.label,
                     metadata=item.metadata, has_image=item.has_image)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ItemsCreated, dependencies=[WriteKey])
async def add_items(
    runtime: RuntimeDep,
    reader: UploadsDep,
    files: Annotated[list[UploadFile], File(description="one or more images")],
    labels: Annotated[list[str] | None, Form(description="one label per file, in order")] = None,
    metadata: Annotated[list[str] | None, Form(description="one JSON object per file, in order")] = None,
    external_ids: Annotated[list[str] | None, Form(description="one client id per file; "
                                                   "re-sending a known id returns the stored item")] = None,
) -> ItemsCreated:
    """Add images to the gallery: all of them, or none when one is bad."""
    count = len(files)
    item_labels = per_file(labels, count, "labels", max_length=MAX_LABEL_LENGTH)
    item_metadata = [parse_metadata(text, f"metadata[{i}]")
                     for i, text in enumerate(per_file(metadata, count, "metadata"))]
    item_ids = per_file(external_ids, count, "external_ids")
    repeated = sorted(ext for ext, n in Counter(item_ids).items() if ext is not None and n > 1)
    if repeated:
        raise InvalidParameter(f"external_ids: {repeated} given to more than one file of the request; "
                               "each file needs its own id")
    uploads = await reader.read(files)
    new_items = [
        NewItem(image=upload.data, external_id=ext, label=label, metadata=meta)
        for upload, ext, label, meta in zip(uploads, item_ids, item_labels, item_metadata, strict=True)
    ]
    async with runtime.gate.shared():
        embedded = await runtime.worker.embed([upload.image for upload in uploads])
        items = await runtime.gateway.add(new_items, {embedded.version: embedded.vectors})
    runtime.metrics.gallery_size.set(await runtime.gateway.count())
    return ItemsCreated(items=[item_public(item) for item in items], model_version=embedded.version)


@router.get("", response_model=ItemPage, dependencies=[ReadKey])
async def list_items(
    gateway: GatewayDep,
    offset: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    label: str | None = None,
) -> ItemPage:
    """Items in insertion order, a page at a time, optionally of one label."""
    items, total = await gateway.list_items(offset, limit, label)
    return ItemPage(items=[item_public(i) for i in items], total=total, offset=offset, limit=limit)


@router.get("/labels", response_model=LabelCounts, dependencies=[ReadKey])
async def label_counts(gateway: GatewayDep) -> LabelCounts:
    """How many items carry each label (most first), and how many have none."""
    counts, unlabelled = await gateway.label_counts()
    return LabelCounts(labels=[LabelCount(label=label, count=n) for label, n in counts.most_common()],
                       unlabelled=unlabelled)


@router.get("/external/{external_id:path}", response_model=ItemPublic, dependencies=[ReadKey])
async def get_item_by_external_id(gateway: GatewayDep, external_id: ExternalId) -> ItemPublic:
    return item_public(await gateway.get_by_external_id(external_id))


@router.delete("/external/{external_id:path}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[WriteKey])
async def delete_item_by_external_id(runtime: RuntimeDep, thumbnails: ThumbnailsDep,
                                     external_id: ExternalId) -> Response:
    deleted = await runtime.gateway.delete_by_external_id(external_id)
    await runtime.gateway.run(thumbnails.remove, deleted)
    runtime.metrics.gallery_size.set(await runtime.gateway.count())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{item_id:int}", response_model=ItemPublic, dependencies=[ReadKey])
async def get_item(gateway: GatewayDep, item_id: ItemId) -> ItemPublic:
    return item_public(await gateway.get(item_id))


@router.get("/{item_id:int}/image", dependencies=[ReadKey],
            responses={200: {"content": {"image/*": {}}, "description": "the original bytes"}})
async def get_item_image(gateway: GatewayDep, item_id: ItemId) -> Response:
    """The image exactly as it was uploaded (404 `no_image` for an item imported without one)."""
    data = await gateway.image(item_id)
    return Response(content=data, media_type=_media_type(data))


@router.get("/{item_id:int}/thumbnail", dependencies=[ReadKey],
            responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest side 256 px"}})
async def get_item_thumbnail(gateway: GatewayDep, thumbnails: ThumbnailsDep, item_id: ItemId,
                             if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
                             ) -> Response:
    """A small JPEG of the image (made on first request, then cached), for grids of results (404
    `no_image` for an item imported without one)."""
    item = await gateway.get(item_id)
    headers = {"ETag": f'"{image_sha256(item)}"', "Cache-Control": "private, no-cache"}  # NoImage: 404
    if if_none_match == headers["ETag"]:  # the browser's copy is this image's
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    try:
        data = await gateway.run(thumbnails.get, item, await gateway.image_path(item_id))
    except FileNotFoundError:  # deleted while the thumbnail was being made
        raise NotFound(f"no item with id {item_id}") from None
    return Response(content=data, media_type="image/jpeg", headers=headers)


@router.patch("/{item_id:int}", response_model=ItemPublic, dependencies=[WriteKey])
async def update_item(gateway: GatewayDep, item_id: ItemId, update: ItemUpdate) -> ItemPublic:
    """Replace the label and/or the metadata of an item."""
    changes = update.model_dump(exclude_unset=True)
    if "metadata" in changes and changes["metadata"] is None:
        changes["metadata"] = {}  # null clears the metadata, as it clears the label
    return item_public(await gateway.update(item_id, **changes))


@router.post("/compact", status_code=status.HTTP_202_ACCEPTED, response_model=CompactionAccepted,
             dependencies=[WriteKey])
async def compact_index(gateway: GatewayDep) -> CompactionAccepted:
    """Rebuild the live version's index from the stored vectors in the background, which frees the
    tombstones of deleted items (HNSW, IVF and prefix kinds). Searches are answered by the current index
    until the new one is swapped in; deletes start this by themselves past a quarter of tombstones."""
    stats = await gateway.run(gateway.gallery.compact, None, False)
    return CompactionAccepted(version=stats.version, tombstones=stats.tombstones, vectors=stats.vectors)


@router.delete("/{item_id:int}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[WriteKey])
async def delete_item(runtime: RuntimeDep, thumbnails: ThumbnailsDep, item_id: ItemId) -> Response:
    """Remove an item from search at once, its thumbnail, and its image unless another item shares it."""
    deleted = await runtime.gateway.delete(item_id)
    await runtime.gateway.run(thumbnails.remove, deleted)
    runtime.metrics.gallery_size.set(await runtime.gateway.count())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{item_id:int}/similar", response_model=SearchResponse, dependencies=[ReadKey])
async def similar_items(
    gateway: GatewayDep,
    worker: WorkerDep,
    settings: SettingsDep,
    item_id: ItemId,
    k: Annotated[int | None, Query(ge=1)] = None,
    label: str | None = None,
) -> SearchResponse:
    """The items most similar to a stored item (the item itself excluded)."""
    clock = Stopwatch()
    k = settings.bounded_k(k)
    version = worker.version
    hits = await gateway.similar(item_id, k, label=label, version=version)
    return SearchResponse(results=[search_hit(h) for h in hits], model_version=version,
                          took_ms=clock.elapsed_ms())


def _media_type(data: bytes) -> str:
    signatures = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png", b"GIF8": "image/gif",
                  b"BM": "image/bmp"}
    for signature, media_type in signatures.items():
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
