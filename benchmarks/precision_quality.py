"""Retrieval cost of each inference runtime and precision: R@K and MAP@R on real test splits.

For every `--rows` entry (runtime:precision) and data set, the embedded default model embeds the test
split through `model.Embedder` with that runtime and precision, each image querying all the others
(`model.metrics.retrieval_metrics`; the default model has no query expansion), and the vectors are
compared with torch fp32's (min and mean cosine). int8 is calibrated on `--calibration` images of the
train split (its classes are disjoint from the test split's: the quantizer never sees a test image or
class). No timing here: `runtime_bench.py` times.

    .venv/bin/python benchmarks/precision_quality.py --data ../shared/data/gtsrb32 ../shared/data/caltech101
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data import load_dataset, open_rgb
from model.embedder import Embedder
from model.evaluation import embed_dataset
from model.metrics import retrieval_metrics

DEFAULT_ROWS = "torch:fp32,torch:bf16,onnxruntime:fp32,openvino:bf16,onnxruntime:int8"


def calibration_batch(embedder: Embedder, root: Path, count: int) -> torch.Tensor:
    """`count` train-split images spread over the split, preprocessed as the model does."""
    train = load_dataset(root, "train")
    step = max(len(train) // count, 1)
    return torch.stack([embedder.preprocess(open_rgb(image.path)) for image in train[::step][:count]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="data sets with labels.csv splits")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="runtime:precision pairs, comma-separated")
    parser.add_argument("--calibration", type=int, default=64, help="int8 calibration images (train split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [tuple(row.split(":")) for row in args.rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="cgd-quality-") as cache:
        for root in args.data:
            test = load_dataset(root, "test")
            reference = Embedder.load(None, device="cpu", precision="fp32", runtime="torch")
            expected, _ = embed_dataset(reference, test)
            calibration = calibration_batch(reference, root, args.calibration)
            for runtime, precision in rows:
                embedder = Embedder.load(None, device="cpu", precision=precision, runtime=runtime,
                                         cache_dir=Path(cache), threads=args.threads,
                                         calibration=calibration if precision == "int8" else None)
                vectors, labels = embed_dataset(embedder, test)
                metrics = retrieval_metrics(vectors, labels)
                cosine = (vectors * expected).sum(axis=1)
                row = {"data": root.name, "images": len(test), "runtime": runtime, "precision": precision,
                       **{key: round(100 * value, 2) for key, value in metrics.items()},
                       "min_cosine": round(float(cosine.min()), 5),
                       "mean_cosine": round(float(cosine.mean()), 5)}
                results.append(row)
                print(json.dumps(row), flush=True)
    keys = [key for key in results[0] if key.startswith(("R@", "MAP"))]
    print("| data | runtime | precision | " + " | ".join(keys) + " | min cosine | mean cosine |")
    print("| --- | --- | --- |" + " ---: |" * (len(keys) + 2))
    for row in results:
        print(f"| {row['data']} ({row['images']} test images) | {row['runtime']} | {row['precision']} | "
              + " | ".join(f"{row[key]:.2f}" for key in keys) + f" | {row['min_cosine']:.5f} | "
              f"{row['mean_cosine']:.5f} |")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
