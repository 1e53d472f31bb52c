"""MDR against a loop over its formula: pair distances, running statistics, nearest level, buffers."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from model.losses import MDRRegularizer, scale_by_mean_distance

BATCH_1 = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 1.0], [-2.0, 0.5]]
BATCH_2 = [[1.0, 2.0], [0.0, -1.0], [2.5, 2.5], [-1.0, 0.0]]


def _pair_distances(points: list[list[float]]) -> list[float]:
    return [math.dist(points[i], points[j]) for i in range(len(points)) for j in range(i + 1, len(points))]


def _mdr_loop(distances: list[float], mean: float, std: float, levels: list[float],
              weight: float, nu: float) -> float:
    nearest = [min(abs((d - mean) / std - level) for level in levels) for d in distances]
    return weight * sum(nearest) / len(nearest) + nu * sum(level * level for level in levels)


def test_first_batch_sets_statistics_from_off_diagonal_pairs() -> None:
    mdr = MDRRegularizer(weight=0.5)
    value = mdr(torch.tensor(BATCH_1, dtype=torch.float64))
    distances = _pair_distances(BATCH_1)
    mean, std = statistics.fmean(distances), statistics.pstdev(distances)
    assert mdr.running_mean.item() == pytest.approx(mean)
    assert mdr.running_std.item() == pytest.approx(std)
    # Not the reference code's mean over the full B x B matrix with its zero diagonal.
    assert mean != pytest.approx(2 * sum(distances) / len(BATCH_1) ** 2)
    assert value.item() == pytest.approx(_mdr_loop(distances, mean, std, [-3.0, 0.0, 3.0], 0.5, 0.01),
                                         rel=1e-5)


def test_running_statistics_follow_momentum_then_normalise_the_next_batch() -> None:
    mdr = MDRRegularizer(levels=(-1.0, 0.0, 0.5), weight=1.0, nu=0.1, momentum=0.9)
    mdr(torch.tensor(BATCH_1))
    first = _pair_distances(BATCH_1)
    second = _pair_distances(BATCH_2)
    mean = 0.9 * statistics.fmean(first) + 0.1 * statistics.fmean(second)
    std = 0.9 * statistics.pstdev(first) + 0.1 * statistics.pstdev(second)
    value = mdr(torch.tensor(BATCH_2))
    assert mdr.num_batches_tracked.item() == 2
    assert mdr.running_mean.item() == pytest.approx(mean, rel=1e-6)
    assert mdr.running_std.item() == pytest.approx(std, rel=1e-6)
    assert value.item() == pytest.approx(_mdr_loop(second, mean, std, [-1.0, 0.0, 0.5], 1.0, 0.1), rel=1e-5)


def test_statistics_are_buffers_saved_in_state_dict_and_frozen_in_eval() -> None:
    mdr = MDRRegularizer()
    mdr(torch.tensor(BATCH_1))
    state = mdr.state_dict()
    assert {"levels", "running_mean", "running_std", "num_batches_tracked"} <= set(state)
    assert {name for name, _ in mdr.named_buffers()} == {"running_mean", "running_std", "num_batches_tracked"}
    restored = MDRRegularizer()
    restored.load_state_dict(state)
    assert restored.running_mean.item() == pytest.approx(statistics.fmean(_pair_distances(BATCH_1)))
    restored.eval()
    x = torch.tensor(BATCH_2)
    assert restored(x).item() == pytest.approx(restored(x).item())
    assert restored.num_batches_tracked.item() == 1
    assert torch.equal(restored.running_mean, mdr.running_mean)


def test_levels_learn_and_embeddings_get_gradients() -> None:
    mdr = MDRRegularizer()
    assert mdr.levels.tolist() == [-3.0, 0.0, 3.0] and (mdr.weight, mdr.nu, mdr.momentum) == (0.1, 0.01, 0.9)
    x = torch.tensor(BATCH_1, requires_grad=True)
    mdr(x).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(mdr.levels.grad).all() and mdr.levels.grad.abs().sum() > 0


def test_scale_by_mean_distance_divides_by_mean_pair_distance() -> None:
    scaled = scale_by_mean_distance(torch.tensor(BATCH_1, dtype=torch.float64))
    mean = statistics.fmean(_pair_distances(BATCH_1))
    expected = [[c / mean for c in p] for p in BATCH_1]
    torch.testing.assert_close(scaled, torch.tensor(expected, dtype=torch.float64))
    assert statistics.fmean(_pair_distances(scaled.tolist())) == pytest.approx(1.0)


def test_rejects_batches_too_small_for_statistics() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        MDRRegularizer()(torch.ones(2, 4))
