"""model.distributed on a real process group: two CPU processes (gloo) started by `launch`."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from model.distributed import SINGLE, Ranks, default_processes, init_from_env, launch, shutdown


def _collectives() -> dict:
    """One rank: gradients that differ by rank, averaged; a decision of rank 0; weights from rank 0."""
    ranks = init_from_env("cpu")
    try:
        torch.manual_seed(ranks.rank)  # different weights on each rank, until broadcast
        layer = torch.nn.Linear(3, 2)
        frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
        unused = torch.nn.Parameter(torch.zeros(4))
        ranks.broadcast_weights(layer)
        inputs = torch.full((1, 3), float(ranks.rank + 1))
        layer(inputs).sum().backward()
        if ranks.rank == 1:
            unused.grad = torch.full((4,), 2.0)
        ranks.average_gradients([*layer.parameters(), frozen, unused])
        gathered: list = [None] * ranks.world_size
        dist.all_gather_object(gathered, {
            "weight": layer.weight.detach().clone(), "weight_grad": layer.weight.grad.clone(),
            "bias_grad": layer.bias.grad.clone(), "unused_grad": unused.grad.clone(),
            "frozen_grad": frozen.grad, "decided": ranks.decide(f"from rank {ranks.rank}"),
            "rank": ranks.rank, "world_size": ranks.world_size, "threads": torch.get_num_threads(),
        })
        return {"ranks": gathered}
    finally:
        shutdown()


def test_two_cpu_processes_average_gradients_and_share_rank_0s_decisions() -> None:
    (first, second) = launch(2, _collectives)["ranks"]
    assert (first["rank"], second["rank"], first["world_size"]) == (0, 1, 2)
    assert torch.equal(first["weight"], second["weight"]), "rank 0's weights reached rank 1"
    # d(sum(W x + b))/dW = x for each output row: x is 1s on rank 0 and 2s on rank 1, so the mean is 1.5.
    for rank in (first, second):
        assert torch.allclose(rank["weight_grad"], torch.full((2, 3), 1.5))
        assert torch.allclose(rank["bias_grad"], torch.ones(2))
        assert torch.allclose(rank["unused_grad"], torch.ones(4)), "no gradient on rank 0 counts as zero"
        assert rank["frozen_grad"] is None
        assert rank["decided"] == "from rank 0"
        assert rank["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) or "OMP_NUM_THREADS" in os.environ


def test_one_process_is_single_and_its_collectives_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env("cpu") is SINGLE and SINGLE.is_main and not SINGLE.distributed
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((2,), 3.0)
    SINGLE.average_gradients([parameter])
    assert torch.equal(parameter.grad, torch.full((2,), 3.0)) and SINGLE.decide(7) == 7
    assert SINGLE.device(torch.device("cpu")) == torch.device("cpu")


def test_each_local_rank_takes_its_own_gpu() -> None:
    ranks = Ranks(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert ranks.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert ranks.device(torch.device("cpu")) == torch.device("cpu")
    assert (ranks.node, ranks.nodes, ranks.is_main) == (1, 2, False)


def test_training_takes_one_process_on_the_cpu_and_one_per_gpu_on_cuda() -> None:
    assert default_processes("cpu") == 1
    if torch.cuda.is_available():
        assert default_processes("cuda") == default_processes("auto") == torch.cuda.device_count()
    else:
        assert default_processes("auto") == 1


def _fails() -> None:
    ranks = init_from_env("cpu")
    try:
        if ranks.rank == 1:
            raise ValueError("rank 1 broke")
        ranks.barrier()
    finally:
        shutdown()


def test_a_failing_rank_stops_the_run_with_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"distributed training failed \(.*rank 1: .*rank 1 broke"):
        launch(2, _fails)
