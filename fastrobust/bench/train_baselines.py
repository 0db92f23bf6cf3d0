"""The baselines of the training suite (fastrobust/bench/train.py), written here:

- EagerLoop: an adversarial-training loop in float32 written the way most research code writes
  it: the attack inline with autograd, torchattacks-style (torchattacks.PGD for PGD-10,
  torchattacks.FFGSM for FGSM-RS: a uniform random start in the eps-ball, then one signed step
  of alpha = 1.25 eps), the model put in eval mode for the attack and back in train mode for the
  update (torchattacks' default), cross-entropy on the adversarial batch, SGD step, and the
  usual running loss / accuracy bookkeeping with .item() every batch (Wong et al.'s and Rice
  et al.'s loops do `train_loss += loss.item() * y.size(0)`). No autocast, no channels_last,
  no CUDA graphs, no fused kernels: float32 as PyTorch runs it by default (cuDNN convolutions
  may use TF32 where torch.backends.cudnn.allow_tf32 is on, PyTorch's default; the suite
  records the setting).
  Batches come from the same device-resident tensors as fastrobust's TensorLoader (a shuffled
  permutation, index_select): the eager loop pays no DataLoader or host-to-device copy, so
  the comparison favours it, if anything.

- FloorLoop: the (k+1) x forward/backward floor of one adversarial-training step: k times
  (forward in eval mode + the gradient with respect to the input) and once (forward in train
  mode + backward of the parameters + SGD step), on one fixed batch, in the precision and
  memory format fastrobust runs in, with no attack logic at all (no random start, no step,
  no projection, no batch fetch). No implementation of k-step adversarial training can do
  less work per batch with the same model; k = 10 for PGD-10, 1 for FGSM-RS, 0 for standard
  training.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..dtypes import autocast_context
from .pgd_baselines import input_gradient


# ----------------------------------------------------------------------------- the attacks


def eager_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
              steps: int) -> torch.Tensor:
    """torchattacks.PGD (L-inf, random start) inline: uniform start in the eps-ball, `steps`
    signed-gradient steps of alpha, projection onto the eps-ball and the [0, 1] box."""
    adv = x.clone().detach()
    adv = adv + torch.empty_like(adv).uniform_(-eps, eps)
    adv = torch.clamp(adv, min=0, max=1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        cost = F.cross_entropy(model(adv), y)
        grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = torch.clamp(x + delta, min=0, max=1).detach()
    return adv


def eager_fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    """torchattacks.FFGSM (FGSM with a random start, Wong et al.) inline: uniform start in the
    eps-ball, one signed-gradient step of alpha (1.25 eps), projection."""
    adv = x + torch.empty_like(x).uniform_(-eps, eps)
    adv = torch.clamp(adv, min=0, max=1).detach()
    adv.requires_grad = True
    cost = F.cross_entropy(model(adv), y)
    grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
    adv = adv + alpha * grad.sign()
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1).detach()


# ----------------------------------------------------------------------------- the eager loop


class EagerLoop:
    """The eager float32 training loop. `recipe` is "standard", "fgsm" or "pgd"; x, y the
    training data (on the device); the model is trained in place with SGD."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, recipe: str,
                 eps: float, alpha: Optional[float], steps: int, lr: float, momentum: float, weight_decay: float):
        if recipe not in ("standard", "fgsm", "pgd"):
            raise ValueError(f"EagerLoop: unknown recipe {recipe!r}")
        self.model, self.x, self.y, self.batch_size = model, x, y, int(batch_size)
        self.recipe, self.eps, self.alpha, self.steps = recipe, eps, alpha, steps
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self._batches = self._epochs()
        # the usual running sums
        self.train_loss = 0.0
        self.train_acc = 0
        self.train_n = 0

    def _epochs(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        while True:
            perm = torch.randperm(n, device=self.x.device)
            for start in range(0, n - self.batch_size + 1, self.batch_size):  # drop_last
                idx = perm[start:start + self.batch_size]
                yield self.x[idx], self.y[idx]

    def adversarial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.recipe == "standard":
            return x
        self.model.eval()
        if self.recipe == "pgd":
            adv = eager_pgd(self.model, x, y, self.eps, self.alpha, self.steps)
        else:
            adv = eager_fgsm_rs(self.model, x, y, self.eps, self.alpha)
        self.model.train()
        return adv

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[float, torch.Tensor]:
        """One step on the batch (x, y): (the loss, as a Python float, and the adversarial batch)."""
        self.model.train()
        adv = self.adversarial(x, y)
        output = self.model(adv)
        loss = F.cross_entropy(output, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        value = loss.item()
        self.train_loss += value * y.size(0)
        self.train_acc += (output.max(1)[1] == y).sum().item()
        self.train_n += y.size(0)
        return value, adv

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, y = next(self._batches)
            self.train_step(x, y)

    def check(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> Tuple[List[float], torch.Tensor]:
        """`steps` training steps on the one batch (x, y): the losses and the last adversarial batch."""
        losses, adv = [], x
        for _ in range(steps):
            loss, adv = self.train_step(x, y)
            losses.append(loss)
        return losses, adv

    def close(self) -> None:
        self._batches.close()


# ----------------------------------------------------------------------------- the floor


class FloorLoop:
    """k x (eval forward + input gradient) + (train forward + backward + SGD step) on one fixed
    batch, under `autocast_dtype` (None: float32) and in channels_last when asked (the model is
    expected in that memory format already)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_steps: int, lr: float,
                 momentum: float, weight_decay: float, autocast_dtype: Optional[torch.dtype] = None,
                 channels_last: bool = False):
        self.model, self.k, self.autocast_dtype = model, int(attack_steps), autocast_dtype
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
        self.y = y
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.scaler = torch.amp.GradScaler(x.device.type) if autocast_dtype == torch.float16 else None
        self.loss: Optional[torch.Tensor] = None

    def step(self) -> torch.Tensor:
        if self.k:
            self.model.eval()
            for _ in range(self.k):
                input_gradient(self.model, self.x, self.y, self.autocast_dtype)
        self.model.train()
        with autocast_context(self.x.device, self.autocast_dtype):
            loss = F.cross_entropy(self.model(self.x).float(), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.loss = loss.detach()
        return self.loss

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def close(self) -> None:
        pass
