"""LADDER's latent space (Zhou et al., spec/methods-more.md §5.1): the frozen classifier's own
feature vector, and a decoder trained to rebuild images from it.

    h = latent_features(classifier, x)                 # (N, d): the input of its last Linear
    decoder = LatentDecoder(d, (1, 8, 8))              # h -> image in [0, 1]
    fit_decoder(decoder, classifier, x_train, epochs=30)

The latent is not a VAE or GAN code: it is what the classifier computes, taken with a forward
hook (the official MNIST LeNet's fc1 output before its ReLU; here by default the input of the
classifier's last nn.Linear, or the output of a named layer).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _last_linear(classifier: nn.Module) -> nn.Module:
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("layer: the classifier has no nn.Linear; name the latent layer")
    return linears[-1]


def latent_features(classifier: nn.Module, x: torch.Tensor, layer: Optional[str] = None) -> torch.Tensor:
    """(N, d) latent codes of x: the input of the classifier's last nn.Linear (layer=None), or the
    output of the submodule `layer`, flattened. Computed without gradients; the classifier's
    mode is left as it is (LADDER keeps it in eval mode)."""
    store = {}
    if layer is None:
        handle = _last_linear(classifier).register_forward_pre_hook(lambda m, args: store.__setitem__("h", args[0]))
    else:
        modules = dict(classifier.named_modules())
        if not layer or layer not in modules:
            raise ValueError(f"layer: the classifier has no submodule {layer!r}")
        handle = modules[layer].register_forward_hook(lambda m, args, out: store.__setitem__("h", out))
    try:
        with torch.no_grad():
            classifier(x)
    finally:
        handle.remove()
    return store["h"].flatten(1)


def logits_from_latent(classifier: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The classifier's logits for latent codes h when the latent is its last Linear's input
    (the default layer): that Linear applied to h."""
    return _last_linear(classifier)(h)


class LatentDecoder(nn.Module):
    """h (N, d) -> images (N, C, H, W) in [0, 1]: Linear to width x ceil(H/4) x ceil(W/4), ReLU,
    two stride-2 transposed convolutions (ReLU), a bilinear resize to exactly H x W where the
    sizes are not multiples of 4, a 3x3 convolution and a sigmoid. LatentDecoder.official_mnist
    is the official MNIST generator (28x28)."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], width: int = 64):
        super().__init__()
        if len(image_shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive integers, got {image_shape!r}")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 2:
            raise ValueError(f"width must be an integer >= 2, got {width!r}")
        self.image_shape: Tuple[int, int, int] = tuple(image_shape)
        c, h, w = image_shape
        self.start = (math.ceil(h / 4), math.ceil(w / 4))
        self.width = width
        self.fc = nn.Linear(latent_dim, width * self.start[0] * self.start[1])
        self.up = nn.Sequential(nn.ConvTranspose2d(width, width, 2, stride=2), nn.ReLU(),
                                nn.ConvTranspose2d(width, width // 2, 2, stride=2), nn.ReLU())
        self.out = nn.Conv2d(width // 2, c, 3, padding=1)

    @classmethod
    def official_mnist(cls, latent_dim: int = 500) -> nn.Module:
        """The official MNIST generator: Linear(d, 50*4*4, no bias), ReLU, ConvT(50, 50, 2, s4)
        -> 14x14, Conv(50, 20, 3) ReLU -> 12x12, ConvT(20, 20, 2, s3) -> 35x35, Conv(20, 20, 4)
        -> 32x32, Conv(20, 1, 5) -> 28x28, sigmoid."""
        return nn.Sequential(nn.Linear(latent_dim, 50 * 4 * 4, bias=False), nn.Unflatten(1, (50, 4, 4)), nn.ReLU(),
                             nn.ConvTranspose2d(50, 50, 2, stride=4), nn.Conv2d(50, 20, 3), nn.ReLU(),
                             nn.ConvTranspose2d(20, 20, 2, stride=3), nn.Conv2d(20, 20, 4), nn.Conv2d(20, 1, 5),
                             nn.Sigmoid())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.fc(h)).view(h.shape[0], self.width, *self.start)
        out = self.up(out)
        if tuple(out.shape[-2:]) != self.image_shape[1:]:
            out = F.interpolate(out, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(out))


def fit_decoder(decoder: nn.Module, classifier: nn.Module, x: torch.Tensor, *, epochs: int = 30,
                batch_size: int = 128, lr: float = 1e-3, layer: Optional[str] = None,
                generator: Optional[torch.Generator] = None) -> float:
    """Trains decoder by MSE(decoder(h(x)), x) with Adam (the official generator training, with
    fewer epochs than its 1000), h the frozen classifier's latent; returns the last epoch's mean
    loss. The classifier is only read."""
    h_all = latent_features(classifier, x, layer)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    decoder.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator, device=generator.device if generator else "cpu")
        loss_sum, batches = 0.0, 0
        for first in range(0, x.shape[0], batch_size):
            rows = order[first:first + batch_size].to(x.device)
            loss = F.mse_loss(decoder(h_all[rows]), x[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum, batches = loss_sum + loss.item(), batches + 1
        loss_sum /= max(batches, 1)
    decoder.eval()
    return loss_sum
