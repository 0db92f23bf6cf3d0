"""Data sets for adversarial training and tests, held as tensors on the training device.

- `load_digits`: scikit-learn's 8x8 digits (embedded default; stratified train/test split).
- `load_cifar10` / `load_cifar100`: the official python-pickle batches from a local folder
  (nothing is downloaded, torchvision not needed).
- `synthetic_dataset`: class prototypes plus noise, any shape, for benchmarks.
- `random_crop_flip` / `RandomCropFlip`: CIFAR augmentation batch-wise on the device.
- `TensorLoader`: shuffled (and shardable) mini-batches of device-resident tensors.
- `load_dataset(name, split)`: any of the above by name, with its `DatasetInfo`.
"""
from .augment import RandomCropFlip, random_crop_flip
from .cifar import (CIFAR10_URL, CIFAR100_URL, cifar10_class_names, cifar100_class_names, load_cifar10,
                    load_cifar100)
from .digits import load_digits
from .loader import DATASETS, DatasetInfo, TensorLoader, load_dataset, resolve_data_dir
from .synthetic import synthetic_dataset, synthetic_pixel_stats

__all__ = [
    "load_digits", "load_cifar10", "load_cifar100", "cifar10_class_names", "cifar100_class_names",
    "CIFAR10_URL", "CIFAR100_URL", "synthetic_dataset", "synthetic_pixel_stats", "random_crop_flip",
    "RandomCropFlip", "TensorLoader", "DatasetInfo", "load_dataset", "resolve_data_dir", "DATASETS",
]
