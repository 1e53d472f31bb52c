"""Every request and response body of the HTTP API (pydantic v2), one model per direction."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
PromotePolicy = Literal["if_better", "always", "never"]
LossName = Literal["triplet", "contrastive", "proxy_anchor", "triplet_mdr"]
MAX_LABEL_LENGTH = 256


class ItemPublic(BaseModel):
    """A gallery item as clients see it."""

    id: int
    external_id: str | None
    label: str | None
    metadata: dict[str, Any]
    sha256: str
    created_at: float


class ItemsCreated(BaseModel):
    items: list[ItemPublic]
    model_version: str


class ItemPage(BaseModel):
    items: list[ItemPublic]
    total: int
    offset: int
    limit: int


class ItemUpdate(BaseModel):
    """PATCH body: the fields present replace the stored ones (null clears the label)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL_LENGTH)
    metadata: dict[str, Any] | None = None


class SearchHit(BaseModel):
    id: int
    external_id: str | None
    score: float
    label: str | None
    metadata: dict[str, Any]


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

    loss: LossName | None = None
    epochs: int | None = Field(default=None, ge=1, le=1000)
    lr: float | None = Field(default=None, gt=0, le=1.0)
    batch_size: int | None = Field(default=None, ge=4, le=1024)
    image_size: int | None = Field(default=None, ge=32, le=1024)
    descriptors: str | None = Field(default=None, pattern=r"^[SMGsmg]{1,3}$")
    labels: list[str] | None = Field(default=None, description="train on these labels only")
    val_fraction: float | None = Field(default=None, gt=0, lt=0.9)
    promote: PromotePolicy = "if_better"
    max_minutes: float | None = Field(default=None, gt=0, le=24 * 60,
                                      description="training budget; re-embedding is reported apart")

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
    phase: Literal["preparing", "training", "re-embedding", "done"] = "training"
    reembedded: int | None = Field(default=None, description="gallery images re-embedded so far")
    to_reembed: int | None = Field(default=None, description="gallery images to re-embed")


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


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "starting"]
    model_version: str | None
    gallery_size: int | None
