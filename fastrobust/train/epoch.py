"""One training epoch of a Trainer: recipe.batch_loss per batch (under autocast when amp is
set), zero_grad, backward (GradScaler for fp16), optimizer and schedule steps, and the epoch's
record. Loss and accuracy sums stay on the device; the host reads them only every `log_every`
batches (the progress bar and the finite-loss check) and at the end (one all-reduce under DDP).
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch

from .. import distributed
from ..attacks.model_runner import eval_mode
from ..dtypes import autocast_context
from .metrics import Progress
from .recipes import StepContext

if TYPE_CHECKING:  # the trainer imports this module
    from .trainer import Trainer


def epoch_values(s: List[float], images: int, elapsed: float) -> Dict[str, Optional[float]]:
    """Mean loss, clean and adversarial accuracy, images per second from the epoch's sums."""
    return {"loss": s[0] / s[1] if s[1] else float("nan"),
            "clean acc": s[2] / s[3] if s[3] else None,
            "adv acc": s[4] / s[5] if s[5] else None,
            "img/s": images / elapsed if elapsed > 0 else None}


def train_epoch(trainer: "Trainer", epoch: int, progress: Progress) -> Dict[str, Any]:
    """Trains epoch `epoch` (0-based) of `trainer` and returns its record (trainer.step advances)."""
    cfg, dist = trainer.config, trainer.dist
    device = dist.device
    trainer.recipe.epoch_start(epoch, cfg.epochs)
    trainer.loader.set_epoch(epoch)
    trainer.train_model.train()
    # loss sum, samples, clean correct, clean samples, adv correct, adv samples
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    extra_sums: Dict[str, Any] = {}
    optimizer = trainer.optimizer
    lr = optimizer.param_groups[0]["lr"]
    progress.start_epoch(epoch, cfg.epochs, trainer.steps_per_epoch)
    t0 = time.perf_counter()
    seen = 0
    last_logged = 0
    for i, (xb, yb) in enumerate(trainer.loader):
        if i >= trainer.steps_per_epoch:
            break
        if cfg.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(epoch=epoch, epochs=cfg.epochs, step=trainer.step, steps_per_epoch=trainer.steps_per_epoch,
                          generator=trainer.generator, autocast_dtype=trainer.autocast_dtype,
                          channels_last=cfg.channels_last, host_generator=trainer.host_generator)
        with autocast_context(device, trainer.autocast_dtype):
            out = trainer.recipe.batch_loss(trainer.train_model, xb, yb, ctx)
        optimizer.zero_grad(set_to_none=True)
        if trainer.scaler is not None:
            trainer.scaler.scale(out.loss).backward()
            trainer.scaler.step(optimizer)
            trainer.scaler.update()
        else:
            out.loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        trainer.scheduler.step()
        trainer.step += 1
        b = yb.shape[0]
        seen += b
        with torch.no_grad():
            sums[0] += out.loss.detach().double() * b
            sums[1] += b
            logits = out.logits
            if logits is None and cfg.track_clean:
                with eval_mode(trainer.model), autocast_context(device, trainer.autocast_dtype):
                    logits = trainer.model(xb)
            if logits is not None:
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                sums[2] += (logits.argmax(1) == yb).sum()
                sums[3] += b
            adv = out.adv_logits
            adv = adv[0] if isinstance(adv, (tuple, list)) else adv
            if adv is not None and adv.shape[0] == b:  # rows in the batch's order
                sums[4] += (adv.argmax(1) == yb).sum()
                sums[5] += b
            for k, v in out.extras.items():
                v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
                extra_sums[k] = extra_sums.get(k, 0.0) + v
        if (i + 1) % cfg.log_every == 0 or i + 1 == trainer.steps_per_epoch:
            values = epoch_values(sums.tolist(), seen * dist.world_size, time.perf_counter() - t0)
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"training loss is {values['loss']} at epoch {epoch + 1}, step "
                                         f"{trainer.step}; lower the learning rate or check the recipe")
            progress.update(i + 1 - last_logged, values)
            last_logged = i + 1
    distributed.all_reduce_sum(sums, dist)
    totals = sums.tolist()
    elapsed = time.perf_counter() - t0
    values = epoch_values(totals, int(totals[1]), elapsed)
    record: Dict[str, Any] = {
        "epoch": epoch + 1, "step": trainer.step, "lr": lr, "train_loss": values["loss"],
        "train_clean_acc": values["clean acc"], "train_adv_acc": values["adv acc"],
        "images_per_s": values["img/s"], "epoch_time_s": elapsed,
    }
    steps = max(1, trainer.steps_per_epoch)
    for k, v in extra_sums.items():
        v = torch.as_tensor(v, dtype=torch.float64, device=device)
        distributed.all_reduce_sum(v, dist)
        record["train_" + k] = float(v) / (steps * dist.world_size)
    return record
