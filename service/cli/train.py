"""`cgd train` and `cgd eval`: fine-tune on a labelled image folder, and measure retrieval."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.data import LabelledImage
    from model.train_config import TrainConfig

DEFAULT_MAX_MINUTES = 15.0


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="fine-tune on a folder (labels.csv or class folders)")
    train.add_argument("--data", type=Path, required=True, help="folder with labels.csv, or <class>/<image>")
    train.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    train.add_argument("--split", default="train", help="labels.csv split to train on (default: train)")
    train.add_argument("--start", type=Path, default=None,
                       help="checkpoint to start from (default: embedded model)")
    # Options left unset take TrainConfig's defaults: the same recipe as POST /train.
    train.add_argument("--loss", help="proxy_anchor (default) | triplet | contrastive | triplet_mdr")
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-minutes", type=float, default=DEFAULT_MAX_MINUTES,
                       help=f"time budget in minutes (default {DEFAULT_MAX_MINUTES:g}; 0 = epochs only)")
    train.add_argument("--image-size", type=int, help="default: the start model's (cached engine)")
    train.add_argument("--batch-size", type=int, help="P classes x K images per batch (default 64)")
    train.add_argument("--images-per-class", type=int, help="K (default 4)")
    train.add_argument("--descriptors", help="e.g. SG, MG, G (default: the start model's)")
    train.add_argument("--embedding-dim", type=int)
    train.add_argument("--lr", type=float, help="base (backbone) learning rate (default 3e-4)")
    train.add_argument("--backbone-lr", type=float)
    train.add_argument("--head-lr", type=float, help="default: 10 x --lr")
    train.add_argument("--optimizer", choices=("adamw", "adam"))
    train.add_argument("--warmup-epochs", type=int, help="heads-only epochs (default 1)")
    train.add_argument("--no-freeze-bn", dest="freeze_bn", action="store_false", default=None)
    train.add_argument("--grad-clip", type=float, help="0 disables clipping (default 10)")
    train.add_argument("--hflip", action="store_true", default=None,
                       help="random horizontal flips (off: mirrors differ)")
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--val-mode", choices=("auto", "classes", "images"))
    train.add_argument("--patience", type=int, help="epochs without improvement; 0 = never stop")
    train.add_argument("--plateau-epochs", type=int,
                       help="epochs without improvement (or one below the best beyond noise) before the "
                            "best weights come back at a tenth of the learning rate (twice at most, then the "
                            "run stops); 0 = the fixed schedule")
    train.add_argument("--engine", choices=("auto", "cached", "full"),
                       help="cached: train the backbone's last stages from a trunk feature cache (default)")
    train.add_argument("--cache-views", type=int, help="augmented views cached per image (default: budget)")
    train.add_argument("--whitening", choices=("auto", "learned", "pca", "none"))
    train.add_argument("--expansion", choices=("auto", "none"),
                       help="search defaults (query expansion, DBA) chosen on validation (default auto)")
    train.add_argument("--scales", type=lambda text: tuple(float(s) for s in text.split(",")),
                       help="inference scales written into the model, e.g. 1,0.707,1.414 (default 1)")
    train.add_argument("--seed", type=int)
    train.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers (full engine)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    train.add_argument("--resume", action="store_true", help="continue an interrupted run into --out")
    train.add_argument("--nproc-per-node", type=_positive_int, default=1,
                       help="data-parallel processes on this machine (one per GPU on CUDA; default 1); "
                            "or launch `cgd train` under torchrun")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser("eval", help="Recall@K and MAP@R of a model on a folder's split")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--checkpoint", type=Path, default=None, help="default: the embedded model")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--ks", default="1,2,4,8", help="comma-separated K of Recall@K")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    evaluate.add_argument("--scales", help="comma-separated input scales whose descriptors are averaged "
                          "(e.g. 1,0.707,1.414; default: the model's)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=run_eval)


def _images(root: Path, split: str) -> list:
    from model.data import load_dataset, read_class_folders

    if (root / "labels.csv").is_file() or (root / split).is_dir():
        return load_dataset(root, split)
    return read_class_folders(root)


_CONFIG_OPTIONS = ("loss", "epochs", "image_size", "batch_size", "images_per_class", "descriptors",
                   "embedding_dim", "lr", "backbone_lr", "head_lr", "optimizer", "warmup_epochs", "freeze_bn",
                   "hflip", "val_fraction", "val_mode", "engine", "cache_views", "whitening", "expansion",
                   "scales", "seed", "num_workers", "device", "precision")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_train(args: argparse.Namespace) -> int:
    from model.distributed import launch
    from model.train_config import TrainConfig

    options = {name: getattr(args, name) for name in _CONFIG_OPTIONS if getattr(args, name) is not None}
    if args.grad_clip is not None:
        options["grad_clip"] = args.grad_clip or None
    if args.patience is not None:
        options["patience"] = args.patience or None
    if args.plateau_epochs is not None:
        options["plateau_epochs"] = args.plateau_epochs or None
    config = TrainConfig(**options, max_minutes=args.max_minutes or None, progress_bar=args.progress)
    images = _images(args.data, args.split)
    job = (images, config, args.out, args.start, args.resume, args.verbose)
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        summary = launch(args.nproc_per_node, _train_rank, *job)
    else:  # one process, or one rank that torchrun started
        summary = _train_rank(*job)
    if summary is None:
        return 0
    if summary["kept_start_model"]:
        sys.stdout.write("training did not beat the start model beyond validation noise: "
                         "the start model was kept\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _train_rank(images: list[LabelledImage], config: TrainConfig, out: Path, start: Path | None, resume: bool,
                verbose: bool) -> dict[str, Any] | None:
    """Train as this process's rank (the only one when not distributed); rank 0's summary, else None."""
    from model.distributed import init_from_env, shutdown
    from model.trainer import train

    ranks = init_from_env(config.device)
    if not logging.getLogger().handlers:  # a process that `launch` started
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                            format=f"%(asctime)s %(levelname)s rank {ranks.rank} %(name)s: %(message)s")
    if not ranks.is_main:  # rank 0 tells the story
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = train(images, config, out=out, start=start, resume=resume, ranks=ranks)
    finally:
        shutdown()
    if not ranks.is_main:
        return None
    return {
        "checkpoint": str(result.checkpoint), "version": result.version, "improved": result.improved,
        "kept_start_model": result.kept_start_model, "stopped": result.stopped, "val_mode": result.val_mode,
        "image_size": result.image_size, "epochs_run": len(result.history), "recipe": result.recipe,
        "validation_start_model": result.baseline, "validation_best_trained": result.best,
        "processes": ranks.world_size,
    }


def run_eval(args: argparse.Namespace) -> int:
    from model.embedder import Embedder
    from model.evaluation import evaluate

    ks = tuple(int(k) for k in args.ks.split(","))
    scales = tuple(float(s) for s in args.scales.split(",")) if args.scales else None
    embedder = Embedder.load(args.checkpoint, device=args.device, scales=scales)
    metrics = evaluate(embedder, _images(args.data, args.split), ks=ks, batch_size=args.batch_size)
    if args.json:
        sys.stdout.write(json.dumps(metrics) + "\n")
    else:
        figures = "  ".join(f"{key} {100 * value:.2f}" for key, value in metrics.items())
        sys.stdout.write(f"{embedder.version} on {args.data} [{args.split}]: {figures}\n")
    return 0
