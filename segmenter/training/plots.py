"""Plots beside the numbers: a width's loss curve (``RUN/plots/pw<W>_loss.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segmenter.fileio import atomic_path


def plot_history(path: Path, width: int, rows: list[dict[str, Any]]) -> None:
    """The loss curve (training and validation loss, validation water IoU) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, (loss_axis, iou_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(steps, [_nan(row.get("loss")) for row in rows], "o-", label="training")
    if any(row.get("val_loss") is not None for row in rows):
        loss_axis.plot(steps, [_nan(row.get("val_loss")) for row in rows], "s-",
                       label="validation")
    loss_axis.set(xlabel="step", ylabel="loss", title=f"pw{width}: loss")
    loss_axis.legend()
    iou_axis.plot(steps, [_nan(row.get("val_water_iou")) for row in rows], "s-", color="C2")
    iou_axis.set(xlabel="step", ylabel="water IoU", title=f"pw{width}: validation water IoU",
                 ylim=(0, 1))
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
