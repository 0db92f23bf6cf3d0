"""CIFAR-10 and CIFAR-100 from a local folder in the official "python version" format.

Nothing is downloaded and torchvision is not needed. Fetch the archive yourself and unpack it:

    CIFAR-10:  https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz   -> cifar-10-batches-py/
    CIFAR-100: https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz  -> cifar-100-python/

`root` is either the folder that holds the unpacked folder or the unpacked folder itself.

cifar-10-batches-py/ holds data_batch_1 .. data_batch_5 (train, 10,000 images each),
test_batch (10,000) and batches.meta (b"label_names"); cifar-100-python/ holds train (50,000),
test (10,000) and meta (b"fine_label_names", b"coarse_label_names"). Each is a pickled dict with
bytes keys: b"data" a uint8 array (N, 3072), each row the 1024 red, then green, then blue pixels
of one 32x32 image in row-major order; labels as b"labels" (CIFAR-10) or b"fine_labels" and
b"coarse_labels" (CIFAR-100).

The files are read with a restricted unpickler that only rebuilds numpy arrays, lists, dicts,
numbers and strings: a file that asks for anything else is refused instead of run.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]

SPLITS = ("train", "test")
LABELS = ("fine", "coarse")
IMAGE_SHAPE = (3, 32, 32)
_ROW = 3 * 32 * 32

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}

# Per-channel pixel mean and standard deviation of the training images, scaled to [0, 1]
# (the values of the usual CIFAR training recipes), for a Normalize layer.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        # arrays in protocol-5 pickles (the data set rewritten by a recent Python)
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        # bytes in a protocol-2 pickle written by Python 3 (numpy's array state)
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy < 2 wrote these names
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR pickle (corrupted or not the python "
                         f"version of the data set; delete it and unpack the archive again): {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is corrupted: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _field(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
    raise ValueError(f"{path} is corrupted: it has no {key!r} entry (found {found})")


def _folder(root: PathLike, name: str, url: str, files: Sequence[str]) -> Path:
    """root/name, or root itself when it is that folder; checks that `files` are there."""
    root = Path(root).expanduser()
    folder = root if root.name == name else root / name
    if not folder.is_dir() and (root / files[0]).is_file():
        folder = root  # the unpacked folder under another name
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        what = f"folder {folder}" if not folder.is_dir() else f"file {folder / missing[0]}"
        raise FileNotFoundError(
            f"CIFAR data not found: expected the {what} (with {', '.join(files)}); nothing is "
            f"downloaded, so fetch {url} yourself and unpack it into {folder.parent}.")
    return folder


def _read_images(folder: Path, files: Sequence[str], label_key: str,
                 device: Union[str, torch.device]) -> Tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _load_pickle(path)
        data = np.asarray(_field(batch, "data", path))
        lab = np.asarray(_field(batch, label_key, path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
            raise ValueError(f"{path} is corrupted: 'data' must be uint8 of shape (N, {_ROW}), "
                             f"got {data.dtype} {data.shape}")
        if lab.shape != (data.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{path} is corrupted: {label_key!r} must hold {data.shape[0]} integer "
                             f"labels, got {lab.dtype} {lab.shape}")
        images.append(data)
        labels.append(lab.astype(np.int64))
    x8 = torch.from_numpy(np.concatenate(images)).view(-1, *IMAGE_SHAPE)
    y = torch.from_numpy(np.concatenate(labels))
    # Move the uint8 images (a quarter of the float32 bytes) and convert on the device.
    x = x8.to(device).to(torch.float32).div_(255.0)
    return x, y.to(device)


def _check_labels(y: torch.Tensor, num_classes: int, where: Path) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{where} is corrupted: labels must lie in [0, {num_classes}), "
                         f"got [{int(y.min())}, {int(y.max())}]")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def load_cifar10(root: PathLike, split: str = "train",
                 device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of CIFAR-10: x float32 (N, 3, 32, 32) in [0, 1], y int64 (N,) in [0, 10).

    N is 50,000 for "train" (data_batch_1..5 in order) and 10,000 for "test" (test_batch).
    `root` holds `cifar-10-batches-py/` or is it. Raises FileNotFoundError when the files are
    missing and ValueError when one is corrupted.
    """
    _check_split(split)
    folder = _folder(root, CIFAR10_FOLDER, CIFAR10_URL, CIFAR10_FILES[split])
    x, y = _read_images(folder, CIFAR10_FILES[split], "labels", device)
    _check_labels(y, 10, folder)
    return x, y


def load_cifar100(root: PathLike, split: str = "train", label: str = "fine",
                  device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of CIFAR-100: x float32 (N, 3, 32, 32) in [0, 1], y int64 (N,).

    label="fine" gives the 100 classes, label="coarse" the 20 superclasses. N is 50,000 for
    "train" and 10,000 for "test". `root` holds `cifar-100-python/` or is it. Raises
    FileNotFoundError when the files are missing and ValueError when one is corrupted.
    """
    _check_split(split)
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    folder = _folder(root, CIFAR100_FOLDER, CIFAR100_URL, CIFAR100_FILES[split])
    x, y = _read_images(folder, CIFAR100_FILES[split], f"{label}_labels", device)
    _check_labels(y, 100 if label == "fine" else 20, folder)
    return x, y


def _names(folder: Path, meta: str, key: str) -> List[str]:
    path = folder / meta
    names = _field(_load_pickle(path), key, path)
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{path} is corrupted: {key!r} must be a list of names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def cifar10_class_names(root: PathLike) -> List[str]:
    """The 10 class names from batches.meta ("airplane", "automobile", ...), in label order."""
    folder = _folder(root, CIFAR10_FOLDER, CIFAR10_URL, ["batches.meta"])
    return _names(folder, "batches.meta", "label_names")


def cifar100_class_names(root: PathLike, label: str = "fine") -> List[str]:
    """The 100 fine (or 20 coarse) class names from meta, in label order."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    folder = _folder(root, CIFAR100_FOLDER, CIFAR100_URL, ["meta"])
    return _names(folder, "meta", f"{label}_label_names")


__all__: Sequence[str] = [
    "load_cifar10", "load_cifar100", "cifar10_class_names", "cifar100_class_names",
    "CIFAR10_URL", "CIFAR100_URL", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
]
