"""Training curves: the loss and validation history as JSON and as a PNG plot."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)


def curve_paths(checkpoint: Path) -> tuple[Path, Path]:
    """The JSON and PNG files written next to `checkpoint` (`<stem>.curves.json/.png`)."""
    return checkpoint.with_suffix(".curves.json"), checkpoint.with_suffix(".curves.png")


def write_curves(history: Sequence[dict[str, Any]], checkpoint: Path,
                 baseline: dict[str, float] | None = None) -> tuple[Path, Path]:
    """Write `history` (one dict per epoch: `epoch`, `loss`, `val` metrics) next to `checkpoint`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    json_path, png_path = curve_paths(checkpoint)
    json_path.write_text(json.dumps({"baseline": baseline or {}, "history": list(history)}, indent=2))
    epochs = [row["epoch"] for row in history]
    figure, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row.get("loss", float("nan")) for row in history], marker="o")
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="loss")
    for key in ("recall@1", "map@r"):
        val_ax.plot(epochs, [100 * row.get("val", {}).get(key, float("nan")) for row in history],
                    marker="o", label=f"val {key}")
        if baseline and key in baseline:
            val_ax.axhline(100 * baseline[key], linestyle="--", linewidth=1, label=f"start model {key}")
    val_ax.set(title="validation retrieval", xlabel="epoch", ylabel="%")
    val_ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    LOG.info("training curves written to %s and %s", json_path, png_path)
    return json_path, png_path
