"""Every request and response body of the HTTP API (pydantic v2), one model per direction."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.config import MAX_SCALE, MIN_SCALE
from model.train_config import TrainConfig

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
WhiteningName = Literal["auto", "learned", "pca", "none"]


class Promotion(StrEnum):
    """When a training job's model replaces the serving one."""

    IF_BETTER = "if_better"  # only when it beats the serving model beyond validation noise
    ALWAYS = "always"  # the trained weights, whatever validation says
    NEVER = "never"  # registered for a later manual activation


LossName = Literal["triplet", "contrastive", "proxy_anchor", "triplet_mdr"]
MAX_LABEL_LENGTH = 256


class ItemPublic(BaseModel):
    """A gallery item as clients see it."""

    id: int
    external_id: str | None
    label: str | None
    metadata: dict[str, Any]
    sha256: str | None = Field(description="the sha256 of its image; null when it has none")
    has_image: bool = Field(description="false for an item imported as a vector without an image: it has "
                            "no thumbnail and is not trained on")
    created_at: float


class ItemsCreated(BaseModel):
    items: list[ItemPublic]
    model_version: str


class ItemPage(BaseModel):
    items: list[ItemPublic]
    total: int
    offset: int
    limit: int


class LabelCount(BaseModel):
    label: str
    count: int


class LabelCounts(BaseModel):
    """How many gallery items carry each label, most first."""

    labels: list[LabelCount]
    unlabelled: int = Field(description="items without a label")


class ItemUpdate(BaseModel):
    """PATCH body: the fields present replace the stored ones (null clears the label or the metadata)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_LENGTH)
    metadata: dict[str, Any] | None = None


class SearchHit(BaseModel):
    id: int
    external_id: str | None
    score: float
    label: str | None
    metadata: dict[str, Any]
    has_image: bool = Field(description="false when the item has no image (no thumbnail to show)")


class SearchResponse(BaseModel):
    results: list[SearchHit]
    model_version: str
    took_ms: float


class BatchSearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(description="one list of hits per uploaded file, in order")
    model_version: str
    took_ms: float


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    model_version: str


class TrainRequest(BaseModel):
    """Fine-tuning on the labelled gallery items; every field has a measured default."""

    model_config = ConfigDict(extra="forbid")

    loss: LossName | None = Field(default=None, description="the metric-learning loss (auto: proxy_anchor)")
    epochs: int | None = Field(default=None, ge=1, le=1000, description="passes over the training "
                               "images (auto: 60, fewer when max_minutes is short)")
    lr: float | None = Field(default=None, gt=0, le=1.0, description="base learning rate (auto: 3e-4)")
    batch_size: int | None = Field(default=None, ge=4, le=1024, description="images per optimiser step, "
                                   "at least 2 labels of 4 (auto: 64)")
    image_size: int | None = Field(default=None, ge=32, le=1024, description="training input size in px "
                                   "(auto: from the start model and the images)")
    descriptors: str | None = Field(default=None, pattern=r"^[SMGsmg]{1,3}$", description="global "
                                    "descriptors: S (SPoC), M (MAC), G (GeM) (auto: the start model's)")
    labels: list[str] | None = Field(default=None, description="train on these labels only")
    val_fraction: float | None = Field(default=None, gt=0, lt=0.9, description="share of the labelled "
                                       "items held out for validation (auto: 0.2)")
    whitening: WhiteningName | None = Field(
        default=None, description="learned whitening fitted after training, kept only when validation "
        "gains beyond noise (auto: learned, then PCA)")
    expansion: Literal["auto", "none"] | None = Field(
        default=None, description="search defaults of the new model: query expansion and database-side "
        "augmentation chosen on validation, kept only when they gain beyond noise and exact copies still "
        "score >= 0.99 (auto); none: off")
    scales: list[Annotated[float, Field(ge=MIN_SCALE, le=MAX_SCALE)]] | None = Field(
        default=None, min_length=1, max_length=4, description="input scales whose descriptors the new model "
        "averages at inference (multi-scale descriptors, e.g. [1, 0.707, 1.414]; costs the sum of the "
        "squared scales in embedding time) (auto: [1])")
    promote: Promotion = Promotion.IF_BETTER
    max_minutes: float | None = Field(default=None, gt=0, le=24 * 60,
                                      description="training budget; re-embedding is reported apart")

    def train_config(self, default_max_minutes: float) -> TrainConfig:
        """The trainer's recipe: the fields set here, TrainConfig's defaults for the rest."""
        fields = self.model_dump(exclude_none=True, exclude={"labels", "promote"})
        fields.setdefault("max_minutes", default_max_minutes)
        # promote=always promotes what training made, even when the start model validates better.
        return TrainConfig(**fields, progress_bar=False,
                           keep_start_if_not_better=self.promote is not Promotion.ALWAYS)

    @field_validator("descriptors")
    @classmethod
    def _distinct_descriptors(cls, value: str | None) -> str | None:
        if value is not None and len(set(value.upper())) != len(value):
            raise ValueError(f"descriptors must not repeat a letter, got {value!r}")
        return value


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus


class JobProgress(BaseModel):
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    phase: Literal["preparing", "caching", "training", "re-embedding", "done"] = Field(
        default="training", description="caching: step/steps count images whose trunk features are cached")
    reembedded: int | None = Field(default=None, description="gallery images re-embedded so far")
    to_reembed: int | None = Field(default=None, description="gallery images to re-embed")


class EpochRecord(BaseModel):
    """One epoch of a training job: its mean loss and the validation metrics after it."""

    epoch: int
    step: int = Field(description="optimiser steps done by the end of the epoch")
    loss: float | None
    val: dict[str, float] = Field(description="validation metrics (fractions in [0, 1])")
    seconds: float | None = Field(default=None, description="training time by the end of the epoch")
    images_per_s: float | None = None


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    params: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: JobProgress | None
    baseline_metrics: dict[str, float] | None = Field(description="validation metrics of the old model")
    new_metrics: dict[str, float] | None = Field(description="validation metrics of the trained model")
    model_version: str | None = Field(description="version of the trained model")
    promoted: bool | None
    message: str | None
    error: str | None
    training_seconds: float | None
    reembedding_seconds: float | None
    left_out_of_training: int | None = Field(
        None, description="labelled items left out of training: they have no image (imported as vectors)")
    left_out_of_version: int | None = Field(
        None, description="items without an image that are not in the promoted version: nothing to embed "
        "them from, so its searches do not find them until `cgd import` supplies their images")
    recipe: dict[str, Any] | None = Field(
        default=None, description="what was actually run: engine, image size, cached views, steps, epochs, "
        "whitening, validation MAP@R gain and its bootstrap lower bound")
    history: list[EpochRecord] = Field(
        default_factory=list, description="one record per finished epoch, while the job runs and after")
    replica: str | None = Field(default=None, description="the replica that runs or ran the job")
    cancel_requested: bool = Field(default=False, description="a cancel was asked while it ran; the "
                                   "replica running it stops it within seconds")


class JobList(BaseModel):
    jobs: list[JobPublic]


class ModelPublic(BaseModel):
    version: str
    active: bool
    created_at: float | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    has_vectors: bool = Field(description="the gallery holds vectors of this version (instant rollback)")


class ModelList(BaseModel):
    models: list[ModelPublic]
    active: str


class ActivationAccepted(BaseModel):
    job_id: str


class ActivationPublic(BaseModel):
    """An activation job: the gallery re-embedded for `version`, then model and index switched."""

    id: str
    version: str
    status: Literal["running", "succeeded", "failed", "cancelled"]
    reembedded: int = Field(description="gallery images re-embedded so far")
    to_reembed: int = Field(description="gallery images to re-embed")
    created_at: float
    finished_at: float | None
    seconds: float | None = Field(description="how long re-embedding and switch took")
    left_out_of_version: int | None = Field(
        None, description="items without an image (imported as vectors) that are not in the version once "
        "it serves: nothing to embed them from, so its searches do not find them until `cgd import` "
        "supplies their images")
    error: str | None


class Health(BaseModel):
    status: Literal["ok"]


class ErrorBody(BaseModel):
    """Every error response: `detail` for people, `code` (snake_case) for programs."""

    detail: str
    code: str


class IndexStatus(BaseModel):
    backend: str = Field(description='the vector index library, e.g. "faiss"')
    kind: str = Field(description="the index kind serving the live version")
    dim: int = Field(description="dimension of the indexed vectors")
    size: int = Field(description="vectors in the live version's index")
    serving: str | None = Field(None, description='what serves now, e.g. "HNSW32,SQ8", "Flat" while a '
                                'trained kind waits for vectors, "prefix512:HNSW32,SQ8 x12" (coarse kind, '
                                'its dimension and the re-ranking factor)')
    coarse_dim: int | None = Field(None, description="dimension of a prefix kind's coarse index")
    tombstones: int = Field(0, description="deleted vectors still held until the next rebuild (compaction)")
    nprobe: int | None = Field(None, description="CGD_INDEX_NPROBE (None: the kind's default)")
    ef_search: int | None = Field(None, description="CGD_INDEX_EF_SEARCH (None: the kind's default)")
    refine_factor: int | None = Field(None,
                                      description="CGD_INDEX_REFINE_FACTOR (None: default or calibrated)")
    use_gpu: str = Field("auto", description="CGD_INDEX_USE_GPU")
    blas_threshold: int = Field(1, description="CGD_INDEX_BLAS_THRESHOLD")


class CompactionAccepted(BaseModel):
    version: str = Field(description="the model version whose index is being rebuilt")
    tombstones: int = Field(description="deleted vectors the index held when the rebuild started")
    vectors: int = Field(description="vectors in the index that serves meanwhile")


class StoreStatus(BaseModel):
    backend: str = Field(description='where items, images and vectors are kept, e.g. "sqlite"')
    items: int | None = Field(description="items in the gallery (None when it cannot be read)")
    writable: bool = Field(description="the last probe write into the data directory succeeded")
    error: str | None = Field(description="the storage fault that makes the service not ready")


class RuntimeMeasurement(BaseModel):
    runtime: str
    precision: str
    images_per_s: float = Field(description="images/s at batch 8, the best of alternating rounds")
    min_cosine: float = Field(description="lowest cosine to torch fp32's vectors over the images measured on")
    agrees: bool = Field(description="min_cosine >= 0.999: a candidate auto may serve")


class RuntimeChoice(BaseModel):
    """What `CGD_RUNTIME=auto` measured and chose (once per model version and CPU, then cached)."""

    runtime: str
    precision: str
    images: int = Field(description="real images the candidates were measured on")
    source: str = Field(description='"gallery", or "shipped sample" (the package\'s photos) when the gallery '
                        'was empty')
    reused_from: str | None = Field(None, description="the model version of the same architecture whose "
                                    "measured speeds this choice reuses (only agreement was checked on this "
                                    "model); None when measured for this model")
    why: str = Field(description="why this candidate and not the others, in one sentence")
    measurements: list[RuntimeMeasurement]


class Readiness(BaseModel):
    """`/ready`: the same body with 200 when ready and 503 when not, `reasons` saying why not."""

    ready: bool
    reasons: list[str]
    model_version: str | None
    device: str | None
    precision: str | None
    runtime: str | None = Field(description="what runs the model")
    runtime_choice: RuntimeChoice | None = Field(
        None, description="with CGD_RUNTIME=auto, how that runtime was chosen (None for a named runtime)")
    index: IndexStatus | None
    store: StoreStatus
    queue_depth: int = Field(description="images waiting for the model")
    training: str | None = Field(description="the id of the running training job, or None")
