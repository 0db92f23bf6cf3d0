"""HGD: a high-level representation guided denoiser for a frozen classifier (Liao et al.,
CVPR 2018; spec/methods-more.md §4). The model trained is fastrobust.models.Denoised(DUNet,
classifier): only the denoiser learns; the classifier is the target's weights, frozen in eval
mode."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ...models import Denoised, DUNet
from ..guidance import GUIDES, guidance_loss
from ..hgd_pairs import KINDS, check_kinds, hgd_inputs
from .base import BatchOutput, Recipe, StepContext, register_recipe
from .losses import check_int, output_logits

DENOISERS = ("small", "official")


def first_conv_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ValueError("hgd: the classifier has no Conv2d to read the image channels from")


def load_target(path: str, model: nn.Module) -> None:
    """The classifier weights of the training checkpoint `path` into `model` (its
    architecture: fastrobust train --target builds it from the checkpoint's configuration)."""
    from ..checkpoint import CheckpointError, check_finite_weights, load_checkpoint, load_model_state

    state = load_checkpoint(path)
    check_finite_weights(path, state["model"])
    try:
        load_model_state(path, model, state["model"])
    except CheckpointError as exc:
        raise ValueError(f"target: {exc}; train with the target's model options (fastrobust train --target "
                         "sets them)") from exc


@register_recipe
class HGD(Recipe):
    """loss = guidance_loss(guide, f, D(x_in), x, y): x_in the batch with one of the official
    perturbations per image (fastrobust.train.hgd_pairs: clean, uniform noise, FGSM, I-FGSM-2,
    I-FGSM-4 at eps = k/255, k uniform in 1..15, crafted on the frozen classifier f by the
    attack engine) and D the denoiser.

    Options: target (the classifier's training checkpoint; required to train), guide="feature"
    (FGD, the official sample config; "logits", "pixel", "class"), layer=None (the feature
    guide's layer: the classifier's last layerN stage), denoiser="small" (DUNet.small: three
    stages of width, 2 width, 2 width, for 8x8 / 32x32) or "official" (the five-stage DUNet),
    width=32, kinds=all five, eps_levels=(1, 15), label="prediction" (the attacks' label: the
    classifier's clean prediction, as the official attacks; "true": y), others=() (training
    checkpoints of more classifiers for the same data: the attacks are then crafted on the
    ensemble averaging the logits of the target and these, as the official ensemble attacks;
    they stay frozen, are not part of the saved model, and are loaded again on resume).

    Training defaults (train_defaults, as the official code): Adam, lr 0.01, weight decay 0, the
    piecewise schedule x0.1 at 60 % and x0.01 at 90 % of the epochs; the command line or the
    config overrides each. eps (given by the trainer) is the evaluation radius, not the
    training pairs'. BatchOutput: adv_logits = f(D(x_in)) (the denoised accuracy);
    extras: guidance.
    """

    name = "hgd"
    train_defaults = {"*": dict(optimizer="adam", lr=0.01, weight_decay=0.0, schedule="piecewise",
                                milestone_fractions=(0.6, 0.9))}

    def __init__(self, eps: float = 8 / 255, target: Optional[str] = None, guide: str = "feature",
                 layer: Optional[str] = None, denoiser: str = "small", width: int = 32,
                 kinds: Sequence[str] = KINDS, eps_levels: Tuple[int, int] = (1, 15), label: str = "prediction",
                 others: Sequence[str] = ()):
        self.eps = eps
        if target is not None and not isinstance(target, str):
            raise ValueError(f"target must be the path of a classifier checkpoint, got {target!r}")
        self.target = target
        if guide not in GUIDES:
            raise ValueError(f"guide must be one of {', '.join(GUIDES)}, got {guide!r}")
        self.guide = guide
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise ValueError(f"layer must be the name of a classifier submodule, got {layer!r}")
        self.layer = layer
        if denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {', '.join(DENOISERS)}, got {denoiser!r}")
        self.denoiser = denoiser
        self.width = check_int(width, "width", 1)
        self.kinds = check_kinds(kinds)
        if (not isinstance(eps_levels, (tuple, list)) or len(eps_levels) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in eps_levels)
                or not 1 <= eps_levels[0] <= eps_levels[1]):
            raise ValueError(f"eps_levels must be two integers 1 <= first <= last, got {eps_levels!r}")
        self.eps_levels = (int(eps_levels[0]), int(eps_levels[1]))
        if label not in ("prediction", "true"):
            raise ValueError(f"label must be 'prediction' or 'true', got {label!r}")
        self.label = label
        if isinstance(others, str) or not isinstance(others, (tuple, list)) or not all(
                isinstance(p, str) and p for p in others):
            raise ValueError(f"others must be a list of classifier checkpoint paths, got {others!r}")
        self.others = tuple(others)
        self._other_models: Tuple[nn.Module, ...] = ()

    def attach_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Loads the `others` classifiers (frozen, eval mode), checking they take these images."""
        from ..checkpoint import CheckpointError
        from ..trained import load_trained

        models = []
        for path in self.others:
            try:
                model, _, (x_test, _), _ = load_trained(path, "cpu")
            except CheckpointError as exc:
                raise ValueError(f"others: {exc}") from exc
            if tuple(x_test.shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(f"others: {path} takes images of shape {tuple(x_test.shape[1:])}, the training "
                                 f"data's are {tuple(x.shape[1:])}")
            models.append(model.requires_grad_(False).to(x.device))
        self._other_models = tuple(models)

    def depends_on_total_epochs(self) -> bool:
        return False  # nothing here reads the run's total epochs: a finished run can be extended

    def structure(self, model: nn.Module, num_classes: int) -> nn.Module:
        channels = first_conv_channels(model)
        den = DUNet.small(channels, self.width) if self.denoiser == "small" else DUNet(channels)
        return Denoised(den, model)

    def prepare(self, model: nn.Module, num_classes: int) -> nn.Module:
        if self.target is None:
            raise ValueError("target: HGD trains a denoiser for a trained classifier; name its checkpoint "
                             "(fastrobust train --recipe hgd --target CHECKPOINT)")
        load_target(self.target, model)
        return self.structure(model, num_classes)

    def batch_loss(self, model, x, y, ctx: StepContext) -> BatchOutput:
        if not isinstance(model, Denoised):
            raise ValueError("hgd: the model must be the Denoised wrapper recipe.prepare returns")
        classifier = model.classifier
        x_in, _ = hgd_inputs(classifier, x, y, ctx.generator, kinds=self.kinds, eps_levels=self.eps_levels,
                             label=self.label, others=self._other_models, seed=ctx.seed())
        x_hat = model.denoiser(x_in)
        loss = guidance_loss(self.guide, classifier, x_hat, x, y, self.layer)
        with torch.no_grad():
            adv_logits = output_logits(classifier(x_hat.detach()))
        return BatchOutput(loss, None, adv_logits, {"guidance": loss.detach()})

    def options(self) -> Dict[str, Any]:
        return dict(target=self.target, guide=self.guide, layer=self.layer, denoiser=self.denoiser, width=self.width,
                    kinds=list(self.kinds), eps_levels=list(self.eps_levels), label=self.label, others=list(self.others))
