"""Data-parallel training over several processes with torch.distributed, launched as `torchrun` does.

`Ranks` is what one training process knows of its group: its rank, whether it is rank 0 (the one that
validates, decides and saves), and the few collectives the trainer needs: gradients averaged after
each backward, rank 0's decisions handed to every rank, barriers. `SINGLE` is the one-process run,
where every collective is a no-op, so the trainer keeps one code path.

`init_from_env` joins the group that `torchrun` (or `launch`) describes in the environment (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT): `gloo` on the CPU, `nccl` with
one GPU per local rank.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from model.device import DeviceError, resolve_device

LOG = logging.getLogger(__name__)
T = TypeVar("T")
# Rank 0 validates, fits whitening and writes the model while the others wait at its next broadcast.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """One process of a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def node(self) -> int:
        return self.rank // self.local_world_size

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_world_size

    def device(self, device: torch.device) -> torch.device:
        """This process's device: GPU `local_rank` when training on CUDA, else `device` itself."""
        if device.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def decide(self, value: T) -> T:
        """Rank 0's `value` (any picklable object) on every rank; the others' values are ignored."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_weights(self, *modules: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's `modules` (they start identical)."""
        if not self.distributed:
            return
        for module in modules:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks, in one all-reduce of a flat buffer.

        A parameter that trains but got no gradient on this rank counts as a zero gradient, so that
        every rank steps the same parameters with the same values."""
        if not self.distributed:
            return
        trained = [p for p in parameters if p.requires_grad]
        if not trained:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in trained])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for parameter in trained:
            mean = flat[offset:offset + parameter.numel()].view_as(parameter).to(parameter.dtype)
            offset += parameter.numel()
            if parameter.grad is None:
                parameter.grad = mean.clone()
            else:
                parameter.grad.copy_(mean)


SINGLE = Ranks()


def init_from_env(device_name: str = "auto") -> Ranks:
    """Join the process group the environment describes; `SINGLE` when WORLD_SIZE is unset or 1.

    On CUDA each local rank takes GPU `LOCAL_RANK` and the group uses nccl; on the CPU it uses gloo
    and each process gets its share of the cores (unless OMP_NUM_THREADS says otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    ranks = Ranks(rank=int(os.environ["RANK"]), world_size=world_size,
                  local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
                  local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() < ranks.local_world_size:
            raise DeviceError(f"{ranks.local_world_size} processes per node need as many GPUs; "
                              f"{torch.cuda.device_count()} found")
        torch.cuda.set_device(ranks.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks.local_world_size))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    LOG.debug("rank %d of %d (%s, %s)", ranks.rank, world_size, backend, ranks.device(device))
    return ranks


def default_processes(device_name: str = "auto") -> int:
    """Data-parallel processes for training on this machine: one per GPU when training runs on CUDA,
    else 1 (processes on one machine's CPU only share its cores)."""
    return torch.cuda.device_count() if resolve_device(device_name).type == "cuda" else 1


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _failure_message(failure: Any) -> str:
    """A failed process's exception text (torch keeps it as is, or in a dict under "message")."""
    message = failure.message
    return str(message.get("message", message) if isinstance(message, dict) else message)


def _recording_errors(errors: str, entrypoint: Callable[..., T], *args: Any) -> T:
    """`entrypoint(*args)` in one launched process; an exception is also written to `errors`/rank-R."""
    try:
        return entrypoint(*args)
    except BaseException as exc:
        (Path(errors) / f"rank-{os.environ.get('RANK', '0')}").write_text(f"{type(exc).__name__}: {exc}")
        raise


def launch(nproc_per_node: int, entrypoint: Callable[..., T], *args: Any) -> T:
    """Run `entrypoint(*args)` in `nproc_per_node` fresh processes on this machine, as
    `torchrun --standalone --nproc-per-node N` does (each finds its rank in the environment, for
    `init_from_env`); return rank 0's result. Any process failing stops them all and raises, naming
    each failed rank: when one raises, the others fail in a collective soon after, and the launcher
    reports only the failure it noticed first, often such a consequence."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=f"cgd-{uuid.uuid4().hex[:12]}", max_restarts=0,
                          start_method="spawn")
    with tempfile.TemporaryDirectory(prefix="cgd-ranks-") as errors:
        try:
            results = elastic_launch(config, _recording_errors)(errors, entrypoint, *args)
        except ChildFailedError as exc:
            written = sorted(Path(errors).glob("rank-*"), key=lambda path: int(path.name[5:]))
            reasons = "; ".join(f"rank {path.name[5:]}: {path.read_text()}" for path in written)
            if not reasons:  # killed, not raised
                rank, failure = exc.get_first_failure()
                reasons = f"rank {rank}: {_failure_message(failure)}"
            raise RuntimeError(f"distributed training failed ({reasons})") from exc
    return results[0]
