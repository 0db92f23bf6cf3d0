"""Mini-batches from data held as one tensor on the device, and the data set registry.

The data sets fastrobust trains on are small (CIFAR train is 50,000 x 3 x 32 x 32, 614 MB in
float32), so they live as single tensors on the training device: a batch is an index_select,
the augmentation runs on the batch where it lies, and loading is never the bottleneck (no
worker processes, no host-to-device copy per batch, no host sync).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple, Union

import torch

from . import cifar, digits, synthetic
from .augment import RandomCropFlip

Device = Union[str, torch.device]
Augment = Callable[..., torch.Tensor]

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from several ints (splitmix64 steps): distinct tuples, unrelated streams."""
    state = 0x9E3779B97F4A7C15
    for v in values:
        state = (state ^ (int(v) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


class TensorLoader:
    """Shuffled mini-batches of (x, y) held as single tensors on one device.

    Each pass (`for xb, yb in loader`) is one epoch: the order is a permutation of the samples
    drawn from (seed, epoch) alone, on the CPU, so every process with the same seed gets the same
    permutation whatever its device. The epoch counter starts at 0 and moves on by one at the
    start of each pass; `set_epoch(e)` chooses the epoch of the next pass (as with
    DistributedSampler).

    - shuffle=False: the samples in their stored order every epoch.
    - drop_last=True: the last, smaller batch of an epoch is left out.
    - augment: a callable `augment(xb, generator=g)` applied to each batch on the device (e.g.
      RandomCropFlip()); g is a generator on the data's device seeded from (seed, epoch, rank),
      so runs repeat exactly.
    - rank / world_size (or `shard(rank, world_size)`): this process's part of each epoch. The
      epoch's permutation is cut to a multiple of world_size (at most world_size - 1 samples
      left out, different ones each epoch when shuffled) and rank r takes positions r,
      r + world_size, ...: the parts are disjoint and equally sized, so every rank runs the same
      number of batches.

    Batches are `x.index_select(0, idx)`: new tensors, the stored data is never modified.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128, *, shuffle: bool = True,
                 drop_last: bool = False, augment: Optional[Augment] = None, seed: int = 0,
                 device: Optional[Device] = None, rank: int = 0, world_size: int = 1):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("x and y must be tensors")
        if x.dim() < 1 or y.dim() < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same first dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        if x.shape[0] < world_size:
            raise ValueError(f"{x.shape[0]} samples cannot be shared among world_size={world_size} ranks")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable, got {type(augment).__name__}")
        device = torch.device(device) if device is not None else x.device
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return self.x.shape[0] // self.world_size

    def __len__(self) -> int:
        """Batches per epoch (for this rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass uses (its permutation and augmentation draws)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> "TensorLoader":
        """A loader over the same tensors (no copy) that yields rank's part of every epoch."""
        other = TensorLoader(self.x, self.y, self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last,
                             augment=self.augment, seed=self.seed, rank=rank, world_size=world_size)
        other.epoch = self.epoch
        return other

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of all samples in `epoch` (int64 on the CPU), the same on every rank."""
        n = self.x.shape[0]
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))

    def indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """This rank's sample indices for `epoch` (default: the next pass's), in order, on the device."""
        epoch = self.epoch if epoch is None else epoch
        order = self.permutation(epoch)
        order = order[: self.num_samples * self.world_size][self.rank::self.world_size]
        return order.to(self.device)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        index = self.indices(epoch)
        generator = None
        if self.augment is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(_mix(self.seed, epoch, self.rank, 1))
        stop = len(self) * self.batch_size if self.drop_last else index.numel()
        for start in range(0, stop, self.batch_size):
            rows = index[start:start + self.batch_size]
            xb = self.x.index_select(0, rows)
            yb = self.y.index_select(0, rows)
            if self.augment is not None:
                xb = self.augment(xb, generator=generator)
            yield xb, yb

    def __repr__(self) -> str:
        return (f"TensorLoader(samples={self.x.shape[0]}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, augment={self.augment!r}, seed={self.seed}, rank={self.rank}, "
                f"world_size={self.world_size}, device={self.device})")


# --------------------------------------------------------------------------------------------
# Registry

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
DATA_DIR_ENV = "FASTROBUST_DATA_DIR"
DEFAULT_DATA_DIR = "data"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training recipe need to know about a data set.

    mean / std: per-channel pixel statistics (for fastrobust.nn.Normalize; the model then sees
    [0, 1] inputs, so attack radii stay in pixel units). augment: whether the standard training
    augmentation (random crop with padding 4 and horizontal flip) applies: CIFAR only.
    """
    name: str
    num_classes: int
    input_shape: Tuple[int, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    augment: bool = False
    class_names: Optional[List[str]] = field(default=None, compare=False)

    def augmentation(self) -> Optional[RandomCropFlip]:
        """RandomCropFlip(padding=4) where augmentation applies, else None (for TensorLoader)."""
        return RandomCropFlip(padding=4) if self.augment else None


def resolve_data_dir(data_dir: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
    """data_dir, else $FASTROBUST_DATA_DIR, else ./data."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR


def _options(name: str, options: dict, allowed: Tuple[str, ...]) -> None:
    """Unknown options are a TypeError, values of the wrong type or range a ValueError; both
    start with load_dataset(NAME) and name the option (they often come from JSON typed by hand)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"load_dataset({name!r}) got unexpected options {unknown}; it takes {list(allowed) or 'none'}")
    for key, value in options.items():
        problem = _OPTION_CHECKS[key](value)
        if problem:
            raise ValueError(f"load_dataset({name!r}) option {key!r} must be {problem}, got {value!r}")


def _is_int(value, lo: int, hi: Optional[int] = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value < hi)


# Each data-set option: None when the value is usable, else what it must be.
_OPTION_CHECKS = {
    "seed": lambda v: None if _is_int(v, 0, 2 ** 63) else "an integer in [0, 2**63)",
    "n": lambda v: None if _is_int(v, 0) else "an integer >= 0",
    "num_classes": lambda v: None if _is_int(v, 1) else "an integer >= 1",
    "shape": lambda v: None if isinstance(v, (list, tuple)) and v and all(_is_int(s, 1) for s in v)
    else "a list of positive integers such as [3, 32, 32]",
    "noise": lambda v: None if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
    else "a number in [0, 1]",
    "label": lambda v: None if v in ("fine", "coarse") else "'fine' or 'coarse'",
}


def load_dataset(name: str, split: str = "train", data_dir=None, device: Device = "cpu",
                 **options) -> Tuple[torch.Tensor, torch.Tensor, DatasetInfo]:
    """(x, y, info) of a data set by name: x float32 (N, *info.input_shape) in [0, 1] and y int64
    (N,), both on `device`.

    names: "digits" (options: seed), "cifar10", "cifar100" (option: label="fine"|"coarse"),
    "synthetic" (options: n (50,000 train / 10,000 test), shape, num_classes, seed, noise).
    CIFAR is read from data_dir (default $FASTROBUST_DATA_DIR, else ./data), which holds
    cifar-10-batches-py/ or cifar-100-python/; nothing is downloaded.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names are {', '.join(DATASETS)}")
    if key == "digits":
        _options(key, options, ("seed",))
        x, y = digits.load_digits(split, seed=options.get("seed", 0))
        info = DatasetInfo("digits", digits.NUM_CLASSES, digits.INPUT_SHAPE, digits.MEAN, digits.STD,
                           augment=False, class_names=[str(i) for i in range(digits.NUM_CLASSES)])
        return x.to(device), y.to(device), info
    if key == "cifar10":
        _options(key, options, ())
        root = resolve_data_dir(data_dir)
        x, y = cifar.load_cifar10(root, split, device=device)
        info = DatasetInfo("cifar10", 10, cifar.IMAGE_SHAPE, cifar.CIFAR10_MEAN, cifar.CIFAR10_STD,
                           augment=True, class_names=_optional_names(cifar.cifar10_class_names, root))
        return x, y, info
    if key == "cifar100":
        _options(key, options, ("label",))
        label = options.get("label", "fine")
        root = resolve_data_dir(data_dir)
        x, y = cifar.load_cifar100(root, split, label=label, device=device)
        info = DatasetInfo("cifar100", 100 if label == "fine" else 20, cifar.IMAGE_SHAPE, cifar.CIFAR100_MEAN,
                           cifar.CIFAR100_STD, augment=True,
                           class_names=_optional_names(cifar.cifar100_class_names, root, label))
        return x, y, info
    # synthetic
    _options(key, options, ("n", "shape", "num_classes", "seed", "noise"))
    if split not in synthetic.SPLITS:
        raise ValueError(f"split must be one of {synthetic.SPLITS}, got {split!r}")
    n = options.get("n", 50_000 if split == "train" else 10_000)
    shape = tuple(options.get("shape", (3, 32, 32)))
    num_classes = options.get("num_classes", 10)
    noise = options.get("noise", 0.5)
    x, y = synthetic.synthetic_dataset(n, shape, num_classes, seed=options.get("seed", 0), device=device,
                                       split=split, noise=noise)
    mean, std = synthetic.synthetic_pixel_stats(noise)
    channels = shape[0] if len(shape) >= 2 else 1
    info = DatasetInfo("synthetic", num_classes, shape, (mean,) * channels, (std,) * channels, augment=False)
    return x, y, info


def _optional_names(fn, *args) -> Optional[List[str]]:
    """Class names from the meta file, or None when it is missing (the images are what matter)."""
    try:
        return fn(*args)
    except FileNotFoundError:
        return None
