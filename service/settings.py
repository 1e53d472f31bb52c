"""`Settings`: every knob of the service, read once from `CGD_*` variables and an optional file.

Build it once, where the app is made (`create_app(Settings())`), and pass it on; tests build
their own with keyword arguments. Nothing is read at import.

Sources, strongest first: keyword arguments, `CGD_*` environment variables, the .env-style file
named by `CGD_SETTINGS_FILE` (or `Settings(_env_file=path)`), then the defaults below. The file
uses the same `CGD_*` names, e.g. `CGD_MAX_BATCH_SIZE=16`. Values that cannot work (a batch size
of 0, a checkpoint that does not exist, `default_k > max_k`, ...) fail at start-up with a
`pydantic.ValidationError` naming the field.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from index import GpuUnavailable, IndexSpec, InvalidIndexKind
from index.engines import Engines, InvalidEngines, server_kinds
from index.faiss_index import resolve_gpu
from index.remote_index import choose_kind
from model.device import DeviceError, resolve_device
from model.runtimes import RuntimeUnavailable, check_runtime
from service.errors import InvalidParameter

LOG = logging.getLogger(__name__)

SETTINGS_FILE_VARIABLE = "CGD_SETTINGS_FILE"
DECODE_NICE = 10  # the default of decode_nice
MAX_THREADS = 1024  # more executor or decode threads than this is a typo, not a machine
STORAGE_WAIT_THREADS = 2  # threads beyond the cores, for work that waits on storage or the database
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its CPU affinity, within the cgroup v2 CPU quota in `cpu_max`
    (a container's `--cpus`)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def default_io_threads() -> int:
    """Threads of the service's executor: one per usable core for decoding and preprocessing (CPU work:
    more would only take the model's cores), and `STORAGE_WAIT_THREADS` more, so that durable writes
    and database round trips waiting on I/O do not hold decoding back."""
    return usable_cores() + STORAGE_WAIT_THREADS


class Settings(BaseSettings):
    """The service's configuration; immutable once built."""

    model_config = SettingsConfigDict(env_prefix="CGD_", frozen=True, extra="forbid",
                                      hide_input_in_errors=True)  # errors never echo CGD_DATABASE_URL

    # Storage and model
    data_dir: Path = Field(Path("cgd-data"), description="gallery, model checkpoints and training jobs")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="inference precision (auto: measured with the runtime, fp32 or a reduced one the "
                            "hardware runs natively that agrees with fp32; int8 only when asked for: "
                            "onnxruntime's static quantization, at a retrieval cost)")
    checkpoint: Path | None = Field(None, description="serve this checkpoint; None: the embedded default")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt"] = Field(
        "auto", description="inference runtime (auto: the fastest that agrees with torch fp32, measured at "
                            "start-up per model version and CPU; ONNX files and the choice cached in "
                            "<data_dir>/engines)")
    index_kind: str = Field("Flat", description='"Flat", "HNSW", "HNSW-SQ8", "IVF-PQ", "prefix:<kind>" '
                                                '(coarse-to-fine on the first branch) or a factory string')
    index_nprobe: int | None = Field(None, ge=1,
                                     description="IVF lists visited per query; None: max(16, nlist/16)")
    index_ef_search: int | None = Field(
        None, ge=1, description="HNSW candidates per query; None: 128 (a prefix kind's coarse search: "
                                "1.5x the candidates it re-ranks)")
    index_refine_factor: int | None = Field(
        None, ge=1, description="candidates re-ranked per result: IVF-PQ's Refine (None: 10) and prefix "
                                "kinds' (None: calibrated at build)")
    index_use_gpu: Literal["auto", "always", "never"] = Field(
        "auto", description="FAISS on a GPU: auto (if FAISS sees one), always (or fail at start-up), never")
    index_blas_threshold: int = Field(1, ge=1,
                                      description="FAISS uses BLAS from this many queries x dimension")

    # Gallery engines (index.engines): item store and vector search
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:password@host:port/db: items, vectors and versions in "
                          "PostgreSQL; None: SQLite under data_dir (images stay files under data_dir anyway)")
    vector_backend: Literal["faiss", "pgvector", "milvus"] = Field(
        "faiss", description="faiss (in the process), pgvector (in CGD_DATABASE_URL's PostgreSQL) or milvus "
                             "(CGD_MILVUS_URI); each accepts its own CGD_INDEX_KIND values")
    milvus_uri: str | None = Field(None, description="Milvus server URI (http://host:19530) or a local file "
                                                     "ending in .db (Milvus Lite)")
    db_pool_size: int = Field(8, ge=1, description="connections per PostgreSQL pool (store, pgvector)")
    db_connect_timeout_s: float = Field(5.0, gt=0, description="seconds to connect to PostgreSQL or Milvus")
    db_statement_timeout_s: float = Field(30.0, gt=0, description="longest PostgreSQL statement, in seconds")

    # Replicas (several `cgd serve` on one CGD_DATABASE_URL and one data_dir)
    replica_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="this replica's name (its own folder data_dir/gallery/replicas/<name>, its training "
                    "jobs); None: the host name. Used with CGD_DATABASE_URL only (SQLite: one process)")
    sync_interval_s: float = Field(0.5, gt=0, le=10, description="how often a replica catches up with the "
                                   "others' writes and model switches (with CGD_DATABASE_URL)")

    # Inference worker (dynamic batching)
    max_batch_size: int = Field(32, ge=1, description="images per forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="how long a batch waits to fill up")
    max_queue_size: int = Field(256, ge=1, description="images waiting for the model; beyond: 503")
    decode_threads: int = Field(default_factory=usable_cores, ge=1, le=MAX_THREADS,
                                description="the inference worker's threads that decode uploads and "
                                            "preprocess images for the model; default: the usable cores")
    decode_nice: int = Field(DECODE_NICE, ge=0, le=19,
                             description="CPU niceness added to the decoding threads: when every core is "
                                         "busy, the model's threads take a core first and decoding fills "
                                         "the gaps (0: the same priority as the model)")
    io_threads: int = Field(default_factory=default_io_threads, ge=1, le=MAX_THREADS,
                            description="the one executor for gallery, storage, thumbnails and "
                                        "re-embedding's decoding; default: the usable cores (affinity and "
                                        "cgroup CPU quota) + 2 for work waiting on I/O")
    search_batch_size: int = Field(256, ge=1, description="most queries answered by one index search")
    search_queue_size: int = Field(1024, ge=1, description="queries waiting for the index; beyond: 503")
    inference_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None: torch's")
    train_threads: int = Field(0, ge=0, description="threads of the training process (0: every core); it "
                               "runs at nice 10, so serving work takes the CPU first")
    train_max_minutes: float = Field(15.0, gt=0, description="time budget of a training job by default")
    train_processes: int | None = Field(None, ge=1, description="data-parallel processes of a training job "
                                        "(torch.distributed: nccl with one GPU each, gloo on the CPU); None: "
                                        "one per GPU when training runs on CUDA, else 1")

    # Request limits
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="bytes per uploaded file")
    max_files_per_request: int = Field(64, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height; guards decompression bombs")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1,
                                   description="bytes of one request body; beyond: 413")
    body_timeout_s: float = Field(60.0, gt=0, description="seconds for a request body to arrive; beyond: 408")
    max_request_pixels: int = Field(200_000_000, ge=1,
                                    description="decoded pixels of one request; beyond: 413")
    max_decoded_pixels: int = Field(200_000_000, ge=1,
                                    description="decoded pixels held across requests; beyond: 503")
    default_k: int = Field(10, ge=1, description="results per query when the client gives no k")
    max_k: int = Field(1000, ge=1, description="most results per query")

    # Access
    api_key: SecretStr | None = Field(None, description="X-API-Key required on state-changing endpoints")
    read_api_key: SecretStr | None = Field(None, description="X-API-Key required on reads and searches")

    # HTTP server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Adds the file named by `CGD_SETTINGS_FILE`, read when the settings are built."""
        named = os.environ.get(SETTINGS_FILE_VARIABLE)
        if not named:
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        path = Path(named)
        if not path.is_file():
            raise SettingsError(f"{SETTINGS_FILE_VARIABLE}={named}: no such file")
        settings_file = DotEnvSettingsSource(settings_cls, env_file=path)
        return init_settings, env_settings, settings_file, dotenv_settings, file_secret_settings

    @field_validator("index_kind", "host")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError("must be non-empty, without surrounding spaces")
        return value

    @model_validator(mode="after")
    def _runtime_usable(self) -> Settings:
        """A named runtime (or int8's onnxruntime) installed, on a device and at a precision it runs."""
        name = "onnxruntime" if self.runtime == "auto" and self.precision == "int8" else self.runtime
        if name != "auto":
            try:
                check_runtime(name, resolve_device(self.device), self.precision)
            except (RuntimeUnavailable, DeviceError) as exc:
                raise ValueError(f"runtime / precision / device: {exc}") from exc
        return self

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no checkpoint file at {value}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir_usable(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @field_validator("api_key", "read_api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("an API key must not be empty; leave it unset to disable the check")
        return value

    @model_validator(mode="after")
    def _index_buildable(self) -> Settings:
        """The index kind and its settings as the gallery will parse them, and the GPU if it must be one."""
        try:
            IndexSpec.parse(self.index_kind, nprobe=self.index_nprobe, ef_search=self.index_ef_search,
                            k_factor=self.index_refine_factor)
            resolve_gpu(self.index_use_gpu)
        except (InvalidIndexKind, GpuUnavailable) as exc:
            raise ValueError(f"index_kind / index_use_gpu: {exc}") from exc
        return self

    def index_options(self) -> dict[str, object]:
        """`Gallery.open`'s keyword arguments from the index and engine settings."""
        return {"index_kind": self.index_kind, "nprobe": self.index_nprobe, "ef_search": self.index_ef_search,
                "k_factor": self.index_refine_factor, "use_gpu": self.index_use_gpu,
                "blas_threshold": self.index_blas_threshold, "engines": self.gallery_engines(),
                "replica": self.replica()}

    def replica(self) -> str | None:
        """This process's replica name on a shared PostgreSQL gallery (None with SQLite: one process)."""
        if self.database_url is None:
            return None
        return self.replica_id or socket.gethostname()

    def gallery_engines(self) -> Engines:
        """The item store and vector backend these settings name."""
        url = self.database_url.get_secret_value() if self.database_url is not None else None
        return Engines(url, self.vector_backend, self.milvus_uri, self.db_pool_size,
                       self.db_connect_timeout_s, self.db_statement_timeout_s)

    @model_validator(mode="after")
    def _engines_usable(self) -> Settings:
        """Engines that fit together, and an index kind the chosen vector backend builds (the message lists
        the valid ones)."""
        try:
            self.gallery_engines()
            if self.vector_backend != "faiss":
                choose_kind(self.index_kind, server_kinds(self.vector_backend), self.vector_backend)
        except (InvalidEngines, InvalidIndexKind) as exc:
            raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        if self.max_request_pixels > self.max_decoded_pixels:
            raise ValueError(f"max_request_pixels ({self.max_request_pixels}) must not exceed "
                             f"max_decoded_pixels ({self.max_decoded_pixels}): it could never run")
        if self.max_queue_size < self.max_files_per_request:
            raise ValueError(f"max_queue_size ({self.max_queue_size}) must hold one full request "
                             f"(max_files_per_request = {self.max_files_per_request})")
        if (self.api_key is not None and self.read_api_key is not None
                and self.api_key.get_secret_value() == self.read_api_key.get_secret_value()):
            raise ValueError("read_api_key must differ from api_key (the write key already grants reads)")
        if self.read_api_key is not None and self.api_key is None:
            LOG.warning("read_api_key is set but api_key is not: state-changing endpoints are open")
        return self

    def bounded_k(self, k: int | None) -> int:
        """The number of results to return: `default_k` when None, at most `max_k`."""
        if k is None:
            return self.default_k
        if k < 1:
            raise InvalidParameter(f"k must be at least 1, got {k}")
        return min(k, self.max_k)
