"""What happened to one width in a training job: the line ``segmenter train`` prints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WidthResult:
    """What happened to one width in this job."""

    width: int
    status: str  # "finished", "skipped" (finished earlier) or "failed"
    steps_done: int
    steps: int
    final_loss: float | None = None
    final_val_loss: float | None = None
    final_val_water_iou: float | None = None
    seconds: float = 0.0
    message: str = ""
    model_path: str | None = None

    def summary_line(self) -> str:
        """One line per width for the end of ``segmenter train``."""
        if self.status == "skipped":
            return f"pw{self.width}: finished earlier ({self.steps_done} steps); untouched"
        if self.status == "failed":
            return f"pw{self.width}: FAILED at step {self.steps_done}/{self.steps}: {self.message}"
        rate = self.steps_done / self.seconds if self.seconds > 0 else float("nan")
        parts = [
            f"pw{self.width}: {self.steps_done} steps in {self.seconds:.0f} s ({rate:.1f} steps/s)",
            f"loss {fmt(self.final_loss)}",
        ]
        if self.final_val_loss is not None:
            parts.append(f"val_loss {fmt(self.final_val_loss)}")
            parts.append(f"val water IoU {fmt(self.final_val_water_iou, 3)}")
        else:
            parts.append("no validation")
        return ", ".join(parts) + (f" -> {self.model_path}" if self.model_path else "")


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
