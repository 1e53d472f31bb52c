"""InferenceWorker on a tiny real torch model: batching, back-pressure, cancellation, swaps, shutdown."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from service.errors import NotReady, Overloaded, PayloadTooLarge
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.worker import InferenceWorker


class TinyNet(nn.Module):
    """Two convolutions, global average pooling, a linear projection, L2 normalisation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, dim) unit rows."""
        return F.normalize(self.head(self.features(x).mean(dim=(2, 3))), dim=1)


class TinyEmbedder:
    """A real (small) model with the `model.Embedder` interface; weights from `seed`."""

    def __init__(self, version: str, *, seed: int, image_size: int = 32, dim: int = 16) -> None:
        self.version = version
        self.dim = dim
        self.qe_n = 0
        self.image_size = image_size
        self.model = TinyNet(dim).eval()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, S, S) float32, resized and standardised."""
        resized = image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        array = (np.asarray(resized, dtype=np.float32) / 255.0 - 0.5) / 0.25
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) -> (B, d) float32 unit rows."""
        return np.ascontiguousarray(self.model(batch).numpy(), dtype=np.float32)


class FlippingEmbedder(TinyEmbedder):
    """A tiny real model that, after each of its forward passes, makes the worker serve `twin`."""

    worker: InferenceWorker
    twin: TinyEmbedder

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        vectors = super().embed_tensors(batch)
        self.worker.swap(self.twin)
        return vectors


class BatchLog:
    """Records what the worker reports through its metrics hooks."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.depths: list[int] = []

    def observe_batch(self, size: int) -> None:
        self.batches.append(size)

    def set_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


def direct(embedder: TinyEmbedder, pictures: list[Image.Image]) -> np.ndarray:
    """Reference: each image embedded alone by the model itself, without the worker."""
    return np.concatenate([
        TinyEmbedder.embed_tensors(embedder, embedder.preprocess(picture)[None]) for picture in pictures
    ])


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 28, 3), dtype=np.uint8)) for i in range(count)]


def settings(**overrides) -> Settings:
    values = {"max_batch_size": 4, "max_wait_ms": 0.0, "max_queue_size": 64, "decode_threads": 2,
              "max_files_per_request": 8} | overrides
    return Settings(**values)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.002)


async def block_model_thread(worker: InferenceWorker) -> tuple[threading.Event, asyncio.Task]:
    """Occupy the model thread until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(timeout=30)

    task = asyncio.ensure_future(worker.run_in_model_thread(hold))
    await until(started.is_set)
    return gate, task


async def taken_by_a_round(worker: InferenceWorker, log: BatchLog) -> None:
    """Wait until `request` was queued and then taken out of the queue by the batching task."""
    await until(lambda: len(log.depths) >= 2 and worker.queue_depth == 0)


V1 = TinyEmbedder("v1", seed=1)
V2 = TinyEmbedder("v2", seed=2, image_size=40)  # another input size: re-preprocessing is needed


def test_concurrent_requests_are_embedded_in_one_forward_pass() -> None:
    metrics = ServiceMetrics()
    pictures = images(8)

    async def scenario():
        worker = InferenceWorker(V1, settings(max_batch_size=8, max_wait_ms=5000), metrics=metrics)
        await worker.start()
        started = time.monotonic()
        results = await asyncio.gather(*(worker.embed([picture]) for picture in pictures))
        elapsed = time.monotonic() - started
        await worker.stop()
        return results, elapsed

    results, elapsed = asyncio.run(scenario())
    assert elapsed < 4.0  # the batch closed when full, not at max_wait_ms
    sample = metrics.registry.get_sample_value
    assert sample("cgd_embed_batch_size_count") == 1
    assert sample("cgd_embed_batch_size_sum") == 8
    assert sample("cgd_embed_queue_depth") == 0
    expected = direct(V1, pictures)
    for row, result in zip(expected, results, strict=True):
        assert result.version == "v1"
        assert result.vectors.shape == (1, 16) and result.vectors.dtype == np.float32
        np.testing.assert_allclose(result.vectors[0], row, atol=1e-5)


def test_large_requests_are_split_into_capped_forward_passes_with_exact_results() -> None:
    log = BatchLog()
    requests = [images(5, seed=s) for s in range(3)]

    async def scenario():
        worker = InferenceWorker(V1, settings(max_batch_size=4, max_wait_ms=20), metrics=log)
        await worker.start()
        results = await asyncio.gather(*(worker.embed(r) for r in requests))
        await worker.stop()
        return results

    results = asyncio.run(scenario())
    assert sum(log.batches) == 15 and max(log.batches) == 4
    for pictures, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result.vectors, direct(V1, pictures), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_full_queue_answers_overloaded_at_once_and_others_complete() -> None:
    log = BatchLog()
    first, second = images(2, seed=1), images(4, seed=2)

    async def scenario():
        worker = InferenceWorker(V1, settings(max_batch_size=2, max_queue_size=4, max_files_per_request=4),
                                 metrics=log)
        await worker.start()
        gate, blocker = await block_model_thread(worker)
        a = asyncio.ensure_future(worker.embed(first))
        await taken_by_a_round(worker, log)  # its forward pass waits for the model thread
        b = asyncio.ensure_future(worker.embed(second))
        await until(lambda: worker.queue_depth == 4)
        with pytest.raises(Overloaded) as refused:
            await worker.embed(images(1))
        gate.set()
        results = await asyncio.gather(a, b, blocker)
        await worker.stop()
        return refused.value, results

    refused, (a, b, _) = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.code == "overloaded"
    assert refused.headers["Retry-After"] == "1"
    np.testing.assert_allclose(a.vectors, direct(V1, first), atol=1e-5)
    np.testing.assert_allclose(b.vectors, direct(V1, second), atol=1e-5)


def test_request_larger_than_the_queue_is_refused() -> None:
    async def scenario():
        worker = InferenceWorker(V1, settings(max_queue_size=8))
        await worker.start()
        try:
            await worker.embed(images(9))
        finally:
            await worker.stop()

    with pytest.raises(PayloadTooLarge):
        asyncio.run(scenario())


def test_cancelled_requests_are_skipped() -> None:
    log = BatchLog()
    kept = images(2, seed=3)

    async def scenario():
        worker = InferenceWorker(V1, settings(max_batch_size=8), metrics=log)
        await worker.start()
        gate, blocker = await block_model_thread(worker)
        a = asyncio.ensure_future(worker.embed(images(1)))
        await taken_by_a_round(worker, log)
        left = asyncio.ensure_future(worker.embed(images(3, seed=4)))
        c = asyncio.ensure_future(worker.embed(kept))
        await until(lambda: worker.queue_depth == 5)
        left.cancel()
        gate.set()
        await asyncio.gather(a, blocker)
        result = await c
        await worker.stop()
        return left, result

    left, result = asyncio.run(scenario())
    assert left.cancelled()
    assert log.batches == [1, 2]  # the 3 images of the cancelled request were never computed
    np.testing.assert_allclose(result.vectors, direct(V1, kept), atol=1e-5)


def test_swap_applies_to_whole_requests_with_the_new_models_preprocessing() -> None:
    log = BatchLog()
    early, waiting = images(1, seed=5), images(5, seed=6)

    async def scenario():
        worker = InferenceWorker(V1, settings(max_batch_size=2), metrics=log)
        await worker.start()
        gate, blocker = await block_model_thread(worker)
        a = asyncio.ensure_future(worker.embed(early))
        await taken_by_a_round(worker, log)
        b = asyncio.ensure_future(worker.embed(waiting))  # preprocessed by v1 (32 px)
        await until(lambda: worker.queue_depth == 5)
        previous = worker.swap(V2)
        version_after = worker.version
        gate.set()
        results = await asyncio.gather(a, b, blocker)
        await worker.stop()
        return previous, version_after, results

    previous, version_after, (a, b, _) = asyncio.run(scenario())
    assert previous is V1 and version_after == "v2"
    assert a.version == "v1"
    np.testing.assert_allclose(a.vectors, direct(V1, early), atol=1e-5)
    assert b.version == "v2"  # all five images, over three forward passes, from v2 at 40 px
    np.testing.assert_allclose(b.vectors, direct(V2, waiting), atol=1e-5)
    assert log.batches == [1, 2, 2, 1]


def test_swaps_between_forward_passes_never_mix_versions_within_a_request() -> None:
    one = FlippingEmbedder("flip-a", seed=7, image_size=32)
    other = FlippingEmbedder("flip-b", seed=8, image_size=24)
    one.twin, other.twin = other, one
    models = {"flip-a": one, "flip-b": other}
    requests = [images(1 + i % 5, seed=10 + i) for i in range(12)]

    async def scenario():
        worker = InferenceWorker(one, settings(max_batch_size=2, max_wait_ms=1))
        one.worker = other.worker = worker
        await worker.start()
        results = await asyncio.gather(*(worker.embed(r) for r in requests))
        await worker.stop()
        return results

    results = asyncio.run(scenario())
    assert {result.version for result in results} == {"flip-a", "flip-b"}
    for pictures, result in zip(requests, results, strict=True):
        reference = models[result.version]
        np.testing.assert_allclose(result.vectors, direct(reference, pictures), atol=1e-5)


def test_stop_with_drain_finishes_queued_work_and_refuses_new_requests() -> None:
    log = BatchLog()
    requests = [images(1, seed=20), images(3, seed=21), images(2, seed=22)]

    async def scenario():
        worker = InferenceWorker(V1, settings(), metrics=log)
        await worker.start()
        gate, blocker = await block_model_thread(worker)
        a = asyncio.ensure_future(worker.embed(requests[0]))
        await taken_by_a_round(worker, log)
        rest = [asyncio.ensure_future(worker.embed(r)) for r in requests[1:]]
        await until(lambda: worker.queue_depth == 5)
        stopping = asyncio.ensure_future(worker.stop(drain=True))
        await asyncio.sleep(0.01)
        with pytest.raises(NotReady):
            await worker.embed(images(1))
        gate.set()
        await stopping
        results = await asyncio.gather(a, *rest, blocker)
        with pytest.raises(NotReady):
            await worker.embed(images(1))
        with pytest.raises(NotReady):
            await worker.run_in_model_thread(time.sleep, 0)
        return results[:3]

    results = asyncio.run(scenario())
    for pictures, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result.vectors, direct(V1, pictures), atol=1e-5)


def test_stop_without_drain_fails_waiting_requests_with_not_ready() -> None:
    log = BatchLog()

    async def scenario():
        worker = InferenceWorker(V1, settings(), metrics=log)
        await worker.start()
        gate, blocker = await block_model_thread(worker)
        a = asyncio.ensure_future(worker.embed(images(1)))
        await taken_by_a_round(worker, log)
        b = asyncio.ensure_future(worker.embed(images(2)))
        await until(lambda: worker.queue_depth == 2)
        stopping = asyncio.ensure_future(worker.stop(drain=False))
        await until(lambda: a.done() and b.done())
        gate.set()
        await asyncio.gather(stopping, blocker)
        return a.exception(), b.exception()

    errors = asyncio.run(scenario())
    assert all(isinstance(error, NotReady) for error in errors)
    assert log.batches == []


def test_decoding_and_preprocessing_run_below_the_model_threads_priority() -> None:
    """The worker's decoding threads (uploads through `run_decoding`, and `preprocess`) run `decode_nice`
    steps below the model thread, which keeps the priority of the process."""

    def niceness() -> tuple[str, int]:
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: list[tuple[str, int]] = []

    class Recording(TinyEmbedder):
        def preprocess(self, image: Image.Image) -> torch.Tensor:
            seen.append(niceness())
            return super().preprocess(image)

    async def scenario():
        worker = InferenceWorker(Recording("v1", seed=1), settings(decode_nice=3))
        await worker.start()
        decoding = await worker.run_decoding(niceness)
        model = await worker.run_in_model_thread(niceness)
        await worker.embed(images(2))
        await worker.stop()
        with pytest.raises(NotReady):
            await worker.run_decoding(niceness)
        return decoding, model

    process = os.getpriority(os.PRIO_PROCESS, 0)
    decoding, model = asyncio.run(scenario())
    assert decoding[0].startswith("cgd-preprocess") and decoding[1] == min(19, process + 3)
    assert model[0].startswith("cgd-model") and model[1] == process
    assert seen and all(name.startswith("cgd-preprocess") and nice == decoding[1] for name, nice in seen)


def test_run_in_model_thread_uses_the_model_thread_and_its_torch_threads() -> None:
    original = torch.get_num_threads()
    pictures = images(2)

    async def scenario():
        worker = InferenceWorker(V1, settings(inference_threads=1))
        await worker.start()
        name = await worker.run_in_model_thread(lambda: threading.current_thread().name)
        threads = await worker.run_in_model_thread(torch.get_num_threads)
        vectors = await worker.run_in_model_thread(direct, V2, pictures=pictures)
        empty = await worker.embed([])
        await worker.stop()
        return name, threads, vectors, empty

    torch.set_num_threads(2)  # so that the worker's setting is observable
    try:
        name, threads, vectors, empty = asyncio.run(scenario())
    finally:
        torch.set_num_threads(original)
    assert name.startswith("cgd-model")
    assert threads == 1
    np.testing.assert_array_equal(vectors, direct(V2, pictures))
    assert empty.vectors.shape == (0, 16) and empty.version == "v1"


class RecordingEmbedder(TinyEmbedder):
    """A tiny real model that notes each forward pass (its batch size) in `passes`."""

    def __init__(self, version: str, *, seed: int, passes: list[str]) -> None:
        super().__init__(version, seed=seed)
        self.passes = passes

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        self.passes.append(f"round of {len(batch)}")
        return super().embed_tensors(batch)


def test_background_work_waits_for_a_round_that_is_still_collecting() -> None:
    """A round collecting requests (here until it holds 4 images) goes before background work submitted
    meanwhile: the background pass starts only once the round has embedded."""
    passes: list[str] = []
    log = BatchLog()
    embedder = RecordingEmbedder("v1", seed=1, passes=passes)

    async def scenario() -> tuple[float, float]:
        worker = InferenceWorker(embedder, settings(max_batch_size=4, max_wait_ms=10_000), metrics=log)
        await worker.start()
        before = worker.seconds_since_request
        first = asyncio.ensure_future(worker.embed(images(1)))
        await taken_by_a_round(worker, log)  # the round holds 1 image and waits for 3 more
        background = asyncio.ensure_future(
            worker.run_between_rounds(lambda: passes.append("background"), max_wait_s=30))
        await asyncio.sleep(0.05)  # the background work had its chance to jump ahead of the round
        rest = await worker.embed(images(3, seed=1))
        await first
        await asyncio.wait_for(background, 10)  # woken when the round ended, not after max_wait_s
        after = worker.seconds_since_request
        await worker.stop()
        assert rest.vectors.shape == (3, 16)
        return before, after

    before, after = asyncio.run(scenario())
    assert passes == ["round of 4", "background"]
    assert before == float("inf") and after < 30


def test_background_work_is_not_starved_by_a_round_that_takes_long() -> None:
    """`max_wait_s` bounds the wait: background work runs while a round still collects."""
    passes: list[str] = []
    log = BatchLog()
    embedder = RecordingEmbedder("v1", seed=1, passes=passes)

    async def scenario() -> None:
        worker = InferenceWorker(embedder, settings(max_batch_size=4, max_wait_ms=10_000), metrics=log)
        await worker.start()
        first = asyncio.ensure_future(worker.embed(images(1)))
        await taken_by_a_round(worker, log)
        await worker.run_between_rounds(lambda: passes.append("background"), max_wait_s=0.05)
        assert not first.done()
        await worker.embed(images(3, seed=1))
        await first
        await worker.stop()

    asyncio.run(scenario())
    assert passes == ["background", "round of 4"]


def test_background_work_runs_at_once_without_requests() -> None:
    async def scenario() -> str:
        worker = InferenceWorker(V1, settings(max_wait_ms=10_000))
        await worker.start()
        name = await asyncio.wait_for(  # without waiting for max_wait_s
            worker.run_between_rounds(lambda: threading.current_thread().name, max_wait_s=30), 10)
        await worker.stop()
        return name

    assert asyncio.run(scenario()).startswith("cgd-model")


class GatedEmbedder(TinyEmbedder):
    """A tiny real model whose first forward pass waits until `gate` is set (`entered` tells it began)."""

    def __init__(self, version: str, *, seed: int) -> None:
        super().__init__(version, seed=seed)
        self.gate, self.entered = threading.Event(), threading.Event()

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        self.entered.set()
        self.gate.wait(timeout=30)
        return super().embed_tensors(batch)


def test_requests_that_queue_while_the_model_runs_go_as_soon_as_it_is_free() -> None:
    """The next round is collected while the model runs the current one: when it ends, the jobs queued
    meanwhile go at once, together, without a new `max_wait_ms` (10 s here) for more."""
    log = BatchLog()
    embedder = GatedEmbedder("v1", seed=1)
    first, second, third = images(4, seed=40), images(2, seed=41), images(1, seed=42)

    async def scenario():
        worker = InferenceWorker(embedder, settings(max_batch_size=4, max_wait_ms=10_000), metrics=log)
        await worker.start()
        a = asyncio.ensure_future(worker.embed(first))  # a full round: it goes at once
        await until(embedder.entered.is_set)
        b = asyncio.ensure_future(worker.embed(second))
        c = asyncio.ensure_future(worker.embed(third))
        await until(lambda: worker.queue_depth == 3)
        embedder.gate.set()
        results = await asyncio.wait_for(asyncio.gather(a, b, c), 5)  # not 10 s for a round of 3
        await worker.stop()
        return results

    results = asyncio.run(scenario())
    assert log.batches == [4, 3]
    for pictures, result in zip((first, second, third), results, strict=True):
        np.testing.assert_allclose(result.vectors, direct(embedder, pictures), atol=1e-5)


def test_a_request_that_waited_for_background_work_goes_when_it_ends() -> None:
    """Requests queued behind work in the model thread (a re-embedding pass) go when it ends, without
    waiting `max_wait_ms` for companions; one that comes to an idle model still waits for them."""
    log = BatchLog()

    async def scenario():
        worker = InferenceWorker(V1, settings(max_batch_size=4, max_wait_ms=10_000), metrics=log)
        await worker.start()
        gate, blocker = await block_model_thread(worker)
        waiting = asyncio.ensure_future(worker.embed(images(1, seed=43)))
        await taken_by_a_round(worker, log)
        gate.set()
        await asyncio.wait_for(asyncio.gather(waiting, blocker), 5)
        alone = asyncio.ensure_future(worker.embed(images(1, seed=44)))
        await until(lambda: worker.queue_depth == 0 and len(log.depths) >= 4)  # in a collecting round
        await asyncio.sleep(0.05)
        collecting = not alone.done()
        await worker.embed(images(3, seed=45))  # fills that round
        await alone
        await worker.stop()
        return collecting

    assert asyncio.run(scenario())
    assert log.batches == [1, 4]


def test_embed_before_start_is_not_ready() -> None:
    worker = InferenceWorker(V1, settings())
    with pytest.raises(NotReady):
        asyncio.run(worker.embed(images(1)))


def test_the_project_embedder_through_the_worker() -> None:
    from model import CGDConfig, Embedder, Preprocessing, create_cgd

    config = CGDConfig(backbone="shufflenet_v2", embedding_dim=32, preprocessing=Preprocessing(image_size=64))
    embedder = Embedder(create_cgd(config), "shufflenet-test", device="cpu", precision="fp32")
    requests = [images(3, seed=30), images(1, seed=31), images(2, seed=32)]

    async def scenario():
        worker = InferenceWorker(embedder, settings(max_batch_size=4, max_wait_ms=20))
        await worker.start()
        results = await asyncio.gather(*(worker.embed(r) for r in requests))
        await worker.stop()
        return results

    for pictures, result in zip(requests, asyncio.run(scenario()), strict=True):
        assert result.version == "shufflenet-test" and result.vectors.shape == (len(pictures), 32)
        np.testing.assert_allclose(result.vectors, embedder.embed_images(pictures, batch_size=1), atol=1e-5)
