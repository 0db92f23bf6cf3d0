"""What the training suite runs (fastrobust/bench/train.py): its implementations' names, the
attack and optimiser settings, the recipes, the model sizes and step counts per device, and the
targets."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import harness

NAME = "train"
MAIN = "fastrobust"
EAGER = "eager"
FLOOR = "floor"
IMPLEMENTATIONS = (MAIN, EAGER, FLOOR)

EPOCH_IMAGES = 50_000  # CIFAR-10's training set
EPS = 8 / 255
PGD_ALPHA, PGD_STEPS = 2 / 255, 10
FGSM_ALPHA = 1.25 * EPS
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 5e-4
FGSM_EPOCHS = 15
BALL_SLACK = 1e-6  # rounding slack of x +- eps in float32
TRAINER_EPOCHS = 1000  # the Trainer's nominal run length (constant lr: only a bound for the step counter)

TARGETS = {"pgd_eager_over_fastrobust_min": 3.0, "pgd_fastrobust_over_floor_max": 1.15,
           "fgsm_15_epochs_s_max": 120.0, "device": "H100"}

MODELS = {"PreActResNet18": "preact_resnet18", "WRN-34-10": "wrn34_10"}
AMP = {torch.float32: None, torch.bfloat16: "bf16", torch.float16: "fp16"}
WRN_CPU_SKIP = ("WRN-34-10 is CUDA only: one forward+backward of it takes seconds on a small CPU even at "
                "16x16, and a PGD-10 case runs about 150 of them, far beyond the few minutes the CPU run is "
                "meant to take")


@dataclass(frozen=True)
class RecipeSpec:
    kind: str  # the case's label
    recipe: str  # fastrobust.train recipe name (also EagerLoop's)
    attack_steps: int  # k: gradient computations of the attack per batch
    alpha: Optional[float]


RECIPE_SPECS = {s.kind: s for s in (RecipeSpec("standard", "standard", 0, None),
                                    RecipeSpec("fgsm-rs", "fgsm", 1, FGSM_ALPHA),
                                    RecipeSpec("pgd-10", "pgd", PGD_STEPS, PGD_ALPHA))}


@dataclass(frozen=True)
class ModelSize:
    model: str
    batch: int
    image_shape: Tuple[int, ...]
    skip: Optional[str] = None


@dataclass(frozen=True)
class Plan:
    models: Tuple[ModelSize, ...]
    data_images: int  # training images held on the device
    check_steps: int
    warmup_steps: int
    timed_steps: int  # training steps per timed round
    rounds: int


CIFAR = (3, 32, 32)
PLANS = {
    ("cuda", False): Plan((ModelSize("PreActResNet18", 512, CIFAR), ModelSize("WRN-34-10", 128, CIFAR)),
                          EPOCH_IMAGES, check_steps=4, warmup_steps=3, timed_steps=5, rounds=3),
    ("cuda", True): Plan((ModelSize("PreActResNet18", 8, CIFAR), ModelSize("WRN-34-10", 8, CIFAR)),
                         256, check_steps=3, warmup_steps=1, timed_steps=1, rounds=1),
    ("cpu", False): Plan((ModelSize("PreActResNet18", 16, (3, 16, 16)),
                          ModelSize("WRN-34-10", 16, (3, 16, 16), skip=WRN_CPU_SKIP)),
                         256, check_steps=3, warmup_steps=0, timed_steps=1, rounds=3),
    ("cpu", True): Plan((ModelSize("PreActResNet18", 4, (3, 8, 8)),
                         ModelSize("WRN-34-10", 4, (3, 8, 8), skip=WRN_CPU_SKIP)),
                        64, check_steps=3, warmup_steps=0, timed_steps=1, rounds=1),
}
DEFAULT_DTYPES = {"cuda": (torch.bfloat16,), "cpu": (torch.float32,)}


def plan_for(device: str, quick: bool) -> Plan:
    return PLANS[(harness.device_type(device), bool(quick))]


def steps_per_epoch(batch: int) -> int:
    return math.ceil(EPOCH_IMAGES / batch)
