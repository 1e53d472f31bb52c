"""ClassBalancedBatchSampler: exactly P classes x K images per batch, determinism, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from model.sampler import ClassBalancedBatchSampler

# Class sizes 10, 7, 4, 3, 2 and 1 (class 5: a single image, unusable), shuffled order.
SIZES = {0: 10, 1: 7, 2: 4, 3: 3, 4: 2, 5: 1}
LABELS = [label for label, size in SIZES.items() for _ in range(size)]
LABELS = LABELS[::2] + LABELS[1::2]


def _batches(sampler: ClassBalancedBatchSampler) -> list[list[int]]:
    return list(sampler)


def test_every_batch_has_exactly_p_classes_of_k_images() -> None:
    sampler = ClassBalancedBatchSampler(LABELS, 3, 4, seed=0, batches_per_epoch=50)
    batches = _batches(sampler)
    assert len(batches) == len(sampler) == 50
    seen = set()
    for batch in batches:
        assert len(batch) == 12 and all(isinstance(i, int) for i in batch)
        per_class = Counter(LABELS[i] for i in batch)
        assert len(per_class) == 3 and set(per_class.values()) == {4}
        for label in per_class:
            members = [i for i in batch if LABELS[i] == label]
            if SIZES[label] >= 4:  # enough images: K distinct ones
                assert len(set(members)) == 4
            else:  # fewer than K: each image once, then repeats
                assert {i for i, y in enumerate(LABELS) if y == label} == set(members)
        seen |= set(per_class)
    assert seen == {0, 1, 2, 3, 4}  # every usable class is drawn; the single-image class never


def test_deterministic_by_seed_and_epoch() -> None:
    first = ClassBalancedBatchSampler(LABELS, 2, 2, seed=7)
    second = ClassBalancedBatchSampler(LABELS, 2, 2, seed=7)
    assert _batches(first) == _batches(second) == _batches(first)
    epoch_0 = _batches(first)
    first.set_epoch(1)
    assert _batches(first) != epoch_0
    first.set_epoch(0)
    assert _batches(first) == epoch_0
    assert _batches(ClassBalancedBatchSampler(LABELS, 2, 2, seed=8)) != epoch_0


def test_default_epoch_length_counts_usable_images() -> None:
    sampler = ClassBalancedBatchSampler(LABELS, 2, 2, seed=0)
    assert len(sampler) == (len(LABELS) - 1) // 4
    assert len(_batches(sampler)) == len(sampler)


def test_fewer_usable_classes_than_p_gives_every_class_each_batch() -> None:
    sampler = ClassBalancedBatchSampler([0, 0, 1, 1, 1, 2], 8, 2, seed=0)
    assert sampler.classes_per_batch == 2 and sampler.batch_size == 4
    for batch in sampler:
        assert Counter([0, 0, 1, 1, 1, 2][i] for i in batch) == {0: 2, 1: 2}


@pytest.mark.parametrize("labels", [[0, 0, 0, 1], [0, 1, 2, 3], []])
def test_too_few_usable_classes_is_an_error(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="at least 2 classes with 2 or more images"):
        ClassBalancedBatchSampler(labels, 2, 2, seed=0)


@pytest.mark.parametrize(("p", "k", "batches"), [(1, 4, None), (2, 1, None), (2, 2, 0)])
def test_bad_sizes_are_errors(p: int, k: int, batches: int | None) -> None:
    with pytest.raises(ValueError, match=">= "):
        ClassBalancedBatchSampler(LABELS, p, k, seed=0, batches_per_epoch=batches)


def test_drives_a_dataloader_from_tensor_labels() -> None:
    labels = torch.tensor(LABELS)
    dataset = TensorDataset(torch.arange(len(LABELS)), labels)
    loader = DataLoader(dataset, batch_sampler=ClassBalancedBatchSampler(labels, 3, 2, seed=1))
    for indices, batch_labels in loader:
        assert indices.shape == (6,)
        assert torch.equal(labels[indices], batch_labels)
        assert sorted(Counter(batch_labels.tolist()).values()) == [2, 2, 2]


@pytest.mark.parametrize(("p", "world_size"), [(4, 2), (5, 2), (5, 1)])
def test_shards_split_each_one_process_batch_by_class(p: int, world_size: int) -> None:
    labels = [label for label in range(8) for _ in range(5)]
    whole = _batches(ClassBalancedBatchSampler(labels, p, 3, seed=4))
    shards = [ClassBalancedBatchSampler(labels, p, 3, seed=4, rank=rank, world_size=world_size)
              for rank in range(world_size)]
    assert all(len(shard) == len(whole) for shard in shards), "every rank steps the same number of times"
    for step, parts in enumerate(zip(*(_batches(shard) for shard in shards), strict=True)):
        assert sorted(i for part in parts for i in part) == sorted(whole[step])
        classes = [{labels[i] for i in part} for part in parts]
        assert sum(len(c) for c in classes) == len(set().union(*classes)) == p, "no class on two ranks"
        assert all(len(c) >= 2 for c in classes)


def test_a_batch_too_small_for_the_ranks_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot give each of 3 ranks 2 classes"):
        ClassBalancedBatchSampler(LABELS, 5, 2, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        ClassBalancedBatchSampler(LABELS, 4, 2, seed=0, rank=2, world_size=2)
