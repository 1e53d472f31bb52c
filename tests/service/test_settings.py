"""Settings: defaults, CGD_* variables, the settings file, and refusal of values that cannot work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.errors import InvalidParameter
from service.settings import MAX_THREADS, STORAGE_WAIT_THREADS, Settings, usable_cores


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CGD_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.data_dir == Path("cgd-data")
    assert settings.device == "auto" and settings.checkpoint is None and settings.index_kind == "Flat"
    assert (settings.max_batch_size, settings.max_wait_ms, settings.max_queue_size) == (32, 5.0, 256)
    assert settings.max_upload_bytes == 20 * 1024 * 1024 and settings.max_image_pixels == 40_000_000
    assert (settings.default_k, settings.max_k) == (10, 1000)
    assert settings.api_key is None and settings.read_api_key is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.inference_threads is None and settings.train_threads == 0


def test_executor_and_decode_threads_follow_the_usable_cores_unless_set(monkeypatch) -> None:
    settings = Settings()
    assert settings.decode_threads == usable_cores()
    assert settings.io_threads == usable_cores() + STORAGE_WAIT_THREADS
    monkeypatch.setenv("CGD_IO_THREADS", "3")
    assert Settings().io_threads == 3


def test_a_process_pinned_to_one_core_gets_threads_for_one() -> None:
    child = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
             "from service.settings import Settings; s = Settings(); print(s.decode_threads, s.io_threads)")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("CGD_")})
    assert out.stdout.split() == ["1", str(1 + STORAGE_WAIT_THREADS)]


@pytest.mark.parametrize(("cpu_max", "limit"),
                         [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None), ("garbled", None)])
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path: Path, cpu_max: str, limit: int | None) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(quota) == (min(affinity, limit) if limit else affinity)
    assert usable_cores(tmp_path / "absent") == affinity


def test_environment_variables_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CGD_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("CGD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CGD_API_KEY", "write-secret")
    monkeypatch.setenv("CGD_INDEX_KIND", "IVF1024,PQ64")
    settings = Settings()
    assert settings.max_batch_size == 8
    assert settings.data_dir == tmp_path
    assert settings.api_key.get_secret_value() == "write-secret"
    assert "write-secret" not in repr(settings)
    assert settings.index_kind == "IVF1024,PQ64"


def test_settings_file_ranks_below_environment_and_arguments(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_file = tmp_path / "cgd.env"
    settings_file.write_text("CGD_MAX_BATCH_SIZE=4\nCGD_PORT=9001\nCGD_DEVICE=cpu\n")
    monkeypatch.setenv("CGD_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("CGD_PORT", "9002")
    settings = Settings(device="auto")
    assert settings.max_batch_size == 4  # from the file
    assert settings.port == 9002  # the environment beats the file
    assert settings.device == "auto"  # arguments beat both


def test_settings_file_must_exist_and_hold_known_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CGD_SETTINGS_FILE", str(tmp_path / "absent.env"))
    with pytest.raises(SettingsError, match=r"absent\.env"):
        Settings()
    typo = tmp_path / "typo.env"
    typo.write_text("CGD_MAX_BACH_SIZE=4\n")
    monkeypatch.setenv("CGD_SETTINGS_FILE", str(typo))
    with pytest.raises(ValidationError, match="max_bach_size"):
        Settings()


@pytest.mark.parametrize(
    "values",
    [
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"max_queue_size": 0},
        {"decode_threads": 0},
        {"io_threads": 0},
        {"io_threads": MAX_THREADS + 1},
        {"decode_threads": MAX_THREADS + 1},
        {"inference_threads": 0},
        {"train_threads": -1},
        {"max_upload_bytes": 0},
        {"max_files_per_request": 0},
        {"max_image_pixels": 0},
        {"default_k": 0},
        {"default_k": 20, "max_k": 10},
        {"max_queue_size": 16, "max_files_per_request": 32},
        {"port": 70000},
        {"device": "tpu"},
        {"index_kind": " "},
        {"host": ""},
        {"api_key": ""},
        {"read_api_key": "   "},
        {"api_key": "same", "read_api_key": "same"},
        {"checkpoint": "/nonexistent/model.pt"},
        {"unknown_setting": 1},
    ],
)
def test_nonsense_is_refused_at_start_up(values: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)


def test_data_dir_must_not_be_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("")
    with pytest.raises(ValidationError, match="not a directory"):
        Settings(data_dir=a_file)
    assert Settings(data_dir=tmp_path / "created-later").data_dir == tmp_path / "created-later"


def test_existing_checkpoint_and_read_key_alone_are_accepted(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    settings = Settings(checkpoint=checkpoint, read_api_key="reader")
    assert settings.checkpoint == checkpoint
    assert settings.api_key is None


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.max_k = 5


def test_bounded_k() -> None:
    settings = Settings(default_k=5, max_k=50)
    assert settings.bounded_k(None) == 5
    assert settings.bounded_k(7) == 7
    assert settings.bounded_k(500) == 50
    with pytest.raises(InvalidParameter):
        settings.bounded_k(0)


def test_index_settings_reach_the_gallery_and_bad_ones_fail_at_start_up(monkeypatch) -> None:
    monkeypatch.setenv("CGD_INDEX_KIND", "prefix:HNSW-SQ8")
    monkeypatch.setenv("CGD_INDEX_EF_SEARCH", "64")
    monkeypatch.setenv("CGD_INDEX_REFINE_FACTOR", "8")
    monkeypatch.setenv("CGD_INDEX_USE_GPU", "never")
    options = Settings().index_options()
    assert options.pop("engines") == Settings().gallery_engines()
    assert options == {"index_kind": "prefix:HNSW-SQ8", "nprobe": None, "ef_search": 64,
                       "k_factor": 8, "use_gpu": "never", "blas_threshold": 1, "replica": None}
    for values, message in (({"index_kind": "prefix:"}, "needs one coarse kind"),
                            ({"index_kind": "IDMap,Flat"}, "adds IDMap2 itself"),
                            ({"index_nprobe": 0}, "index_nprobe"),
                            ({"index_use_gpu": "sometimes"}, "index_use_gpu"),
                            ({"index_blas_threshold": 0}, "index_blas_threshold")):
        with pytest.raises(ValidationError, match=message):
            Settings(**values)
    if getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
        with pytest.raises(ValidationError, match="no GPU"):
            Settings(index_use_gpu="always")  # a GPU is demanded: refused where FAISS sees none


@pytest.mark.parametrize(("values", "message"), [
    ({"vector_backend": "pgvector", "index_kind": "IVF-PQ"},
     "not one the pgvector backend builds; valid CGD_INDEX_KIND values: Flat, HNSW, HNSW32"),
    ({"vector_backend": "milvus", "milvus_uri": "http://milvus:19530", "index_kind": "HNSW-SQ8"},
     "not one the milvus backend builds; valid CGD_INDEX_KIND values: Flat, HNSW, IVF-Flat, IVF-SQ8"),
    ({"vector_backend": "milvus", "index_kind": "HNSW"}, "the milvus backend needs CGD_MILVUS_URI"),
    ({"database_url": "mysql://cgd:s3cret-pw@db/gallery"}, "must start with postgresql://"),
])
def test_engines_that_cannot_work_fail_at_start_up_without_the_password(values: dict, message: str) -> None:
    values = {"database_url": "postgresql://cgd:s3cret-pw@db/gallery", **values}
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(**values)
    assert "s3cret-pw" not in str(refused.value)


def test_each_vector_backend_takes_its_own_index_kinds() -> None:
    url = "postgresql://cgd:s3cret-pw@db/gallery"
    assert Settings(database_url=url, vector_backend="pgvector", index_kind="hnsw32").index_kind == "hnsw32"
    assert Settings(database_url=url, vector_backend="milvus", milvus_uri="/data/gallery.db",
                    index_kind="IVF-SQ8").gallery_engines().vector_backend == "milvus"
    with pytest.raises(ValidationError, match="needs a PostgreSQL database URL"):
        Settings(vector_backend="pgvector", index_kind="HNSW")
    assert "s3cret-pw" not in repr(Settings(database_url=url))
