"""Training-step benchmark: one optimiser-step-equivalent (forward and backward, batch 64, 224 px) of
the embedded default model, whole or as the cached engine's tail over trunk maps, in each training
precision on this CPU: fp32, plain bf16 autocast, and bf16 with the depthwise convolutions in fp32
(`model.device.training_autocast`, what training runs under bf16). Alternating repeats, medians.

    nice -n -10 .venv/bin/python benchmarks/train_step_bench.py --tail-stages 3 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks.finetune_bench import cpu
from model.default import default_model
from model.device import autocast, training_autocast
from model.stages import split_backbone

MODES = ("fp32", "bf16", "bf16, depthwise fp32")


def precision(mode: str, module: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    cpu_device = torch.device("cpu")
    if mode == "fp32":
        return contextlib.nullcontext()
    if mode == "bf16":
        return autocast(cpu_device, torch.bfloat16)
    return training_autocast(cpu_device, torch.bfloat16, module)


def steps(batch: int, tail_stages: int) -> Iterator[tuple[str, torch.nn.Module, Callable[[], torch.Tensor]]]:
    """(name, the module precision applies to, a forward returning the loss) of each measured step."""
    model = default_model().train()
    for module in model.modules():  # frozen BatchNorm, as training runs it
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    images = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    yield "whole network", model, lambda: model.forward_train(images).embedding.float().sum()
    split = split_backbone(model.backbone, tail_stages)
    with torch.no_grad():
        maps = split.trunk.eval()(images).contiguous(memory_format=torch.channels_last)
    yield (f"tail ({tail_stages} stages)", split.tail,
           lambda: model.forward_head(split.tail(maps)).embedding.float().sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tail-stages", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record: dict = {"cpu": cpu(), "threads": args.threads, "batch": args.batch,
                    "load_start": [round(x, 2) for x in os.getloadavg()], "images_per_s": {}}
    for name, module, loss in steps(args.batch, args.tail_stages):
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        for repeat in range(args.repeats + 1):  # the first round warms every mode up
            for mode in MODES:
                began = time.perf_counter()
                with precision(mode, module):
                    value = loss()
                value.backward()
                if repeat:
                    seconds[mode].append(time.perf_counter() - began)
        record["images_per_s"][name] = {mode: round(args.batch / statistics.median(times), 1)
                                        for mode, times in seconds.items()}
        print(name, record["images_per_s"][name], flush=True)
    record["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
