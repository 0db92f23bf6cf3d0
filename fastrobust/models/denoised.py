"""Denoised(denoiser, classifier): a defended model, classifier(denoiser(x)), one nn.Module
with [0, 1] images in and logits out (HGD's deployed form; spec/methods-more.md §4)."""
from __future__ import annotations

from torch import nn


class Denoised(nn.Module):
    """classifier(denoiser(x)).

    freeze_classifier=True (default; HGD's training): the classifier's parameters get
    requires_grad=False and it stays in eval mode whatever train() is asked, so that training
    the denoiser never moves the classifier's weights or BatchNorm statistics. Attacks see one
    differentiable model: an end-to-end attack goes through both.
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, freeze_classifier: bool = True):
        super().__init__()
        for value, name in ((denoiser, "denoiser"), (classifier, "classifier")):
            if not isinstance(value, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
        if not isinstance(freeze_classifier, bool):
            raise ValueError(f"freeze_classifier must be True or False, got {freeze_classifier!r}")
        self.denoiser = denoiser
        self.classifier = classifier
        self.freeze_classifier = freeze_classifier
        if freeze_classifier:
            classifier.requires_grad_(False)
            classifier.eval()

    def train(self, mode: bool = True) -> "Denoised":
        super().train(mode)
        if self.freeze_classifier:
            self.classifier.eval()
        return self

    def forward(self, x):
        return self.classifier(self.denoiser(x))
