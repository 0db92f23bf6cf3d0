"""TensorBoard logs of a run (`fastrobust train --tensorboard`, TrainConfig(tensorboard=True)),
through torch.utils.tensorboard: the optional `tensorboard` package (pip install
"fastrobust[tensorboard]") writes them; `tensorboard --logdir OUT/tensorboard` shows them.

- every epoch's record of metrics.jsonl as scalars, at step = the epoch: train/* (loss,
  clean and adversarial accuracy, lr, images per second), test/* (the periodic clean and PGD
  accuracy), guard/*;
- the evaluation after training, at step = the last epoch: eval/clean_accuracy,
  eval/robust_accuracy and eval/accuracy_after/<attack> (the cascade's accuracy after each
  attack); the gradient-masking checks' curves, as scalars over their own x axis where it is
  an integer (eval/accuracy_vs_steps over the attack steps, eval/loss_curve over the
  iterations of the plain PGD ascent) and as the report's images (accuracy_vs_eps, accuracy_vs_steps, loss_curves).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

INSTALL = 'pip install "fastrobust[tensorboard]" (or pip install tensorboard)'


def available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package
    except ImportError:
        return False
    return SummaryWriter is not None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _tag(key: str) -> str:
    """metrics.jsonl's train_loss -> train/loss, test_pgd_acc -> test/pgd_acc, lr -> train/lr."""
    for group in ("train", "test", "guard"):
        if key.startswith(group + "_"):
            return f"{group}/{key[len(group) + 1:]}"
    return f"train/{key}"


class TensorBoardLog:
    """A SummaryWriter on OUT/tensorboard; ImportError naming the install command when the
    tensorboard package is missing."""

    def __init__(self, out: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(f"tensorboard: the tensorboard package is not installed; {INSTALL}") from exc
        self.log_dir = os.path.join(out, "tensorboard")
        self.writer = SummaryWriter(log_dir=self.log_dir)

    def epoch(self, record: Mapping[str, Any]) -> None:
        """One metrics.jsonl record: its numbers at step = record["epoch"]."""
        step = int(record["epoch"])
        for key, value in record.items():
            number = _number(value)
            if key != "epoch" and number is not None:
                self.writer.add_scalar(_tag(key), number, step)
        self.writer.flush()

    def evaluation(self, report: Mapping[str, Any], step: int, figures: Mapping[str, str] = ()) -> None:
        """An evaluation report (EvalReport.to_dict()) at `step`; figures: {name: PNG path} of
        its plots, added as images."""
        w = self.writer
        for key in ("clean_accuracy", "robust_accuracy"):
            if _number(report.get(key)) is not None:
                w.add_scalar(f"eval/{key}", report[key], step)
        for attack in report.get("attacks", ()):
            if _number(attack.get("robust_accuracy")) is not None:
                w.add_scalar(f"eval/accuracy_after/{attack['name']}", attack["robust_accuracy"], step)
        for check in report.get("checks", ()):
            _check_curves(w, check)
        for name, path in dict(figures).items():
            image = _read_png(path)
            if image is not None:
                w.add_image(f"eval/{name}", image, step, dataformats="HWC")
        w.flush()

    def close(self) -> None:
        self.writer.close()


def _check_curves(writer, check: Dict[str, Any]) -> None:
    data = check.get("data") or {}
    if check.get("name") == "steps" and data.get("steps") and data.get("accuracy"):
        for steps, acc in zip(data["steps"], data["accuracy"]):
            if _number(acc) is not None:
                writer.add_scalar("eval/accuracy_vs_steps", acc, int(steps))
    if check.get("name") == "loss_curve" and data.get("curve"):
        for i, value in enumerate(data["curve"]):
            if _number(value) is not None:
                writer.add_scalar("eval/loss_curve", value, i)

def _read_png(path: str):
    """(H, W, 3) uint8 array of a PNG, or None where it cannot be read."""
    import numpy as np
    from matplotlib import image as mpimg

    try:
        pixels = mpimg.imread(path)
    except (OSError, ValueError):
        return None
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    return pixels[..., :3]
