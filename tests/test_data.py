"""fastrobust.data: the stratified digits split, CIFAR readers on fake folders in the official
pickle format, synthetic data, batch-wise crop/flip augmentation and the device tensor loader."""
import collections
import pickle

import numpy as np
import pytest
import torch

from fastrobust.data import (DATASETS, CIFAR10_URL, CIFAR100_URL, RandomCropFlip, TensorLoader, cifar10_class_names,
                             cifar100_class_names, load_cifar10, load_cifar100, load_dataset, load_digits,
                             random_crop_flip, synthetic_dataset, synthetic_pixel_stats)

# --------------------------------------------------------------------------------------------
# digits


def _rows(x, y):
    return collections.Counter((tuple(img.flatten().tolist()), int(label)) for img, label in zip(x, y))


def test_digits_split_is_stratified_disjoint_and_deterministic():
    sklearn = pytest.importorskip("sklearn.datasets")
    full = sklearn.load_digits()
    class_sizes = np.bincount(full.target)
    for seed in (0, 1, 7):
        xtr, ytr = load_digits("train", seed=seed)
        xte, yte = load_digits("test", seed=seed)
        assert xtr.shape == (1438, 1, 8, 8) and xte.shape == (359, 1, 8, 8)
        test_counts = torch.bincount(yte, minlength=10).numpy()
        train_counts = torch.bincount(ytr, minlength=10).numpy()
        assert (np.abs(test_counts - 0.2 * class_sizes) <= 1).all(), test_counts
        assert (test_counts > 0).all() and (train_counts > 0).all()
        assert (test_counts + train_counts == class_sizes).all()
        # the two splits are a partition of the 1797 images (as a multiset of image+label rows)
        whole = _rows(torch.tensor(full.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(full.target))
        assert _rows(xtr, ytr) + _rows(xte, yte) == whole
        again = load_digits("test", seed=seed)
        assert torch.equal(again[0], xte) and torch.equal(again[1], yte)
    assert not torch.equal(load_digits("test", seed=0)[0], load_digits("test", seed=1)[0])
    # returned in shuffled, not class-sorted, order
    assert (load_digits("train")[1].diff() != 0).float().mean() > 0.5


# --------------------------------------------------------------------------------------------
# CIFAR on fake folders

def _batch(rng, n, **labels):
    batch = {b"batch_label": b"fake batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    for key, high in labels.items():
        batch[key.encode()] = rng.integers(0, high, n).tolist()
    return batch


def _dump(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.fixture
def cifar10_root(tmp_path):
    """A parent folder holding cifar-10-batches-py/ with 5 train batches of 4 images and a
    test batch of 3, in the official layout (bytes keys, protocol 2 as the originals)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{i}": _batch(rng, 4, labels=10) for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 3, labels=10)
    for name, batch in batches.items():
        _dump(folder / name, batch)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 4, b"num_vis": 3072})
    return tmp_path, batches


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batches = {"train": _batch(rng, 10, fine_labels=100, coarse_labels=20),
               "test": _batch(rng, 6, fine_labels=100, coarse_labels=20)}
    for name, batch in batches.items():
        _dump(folder / name, batch, protocol=pickle.HIGHEST_PROTOCOL)
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return tmp_path, batches


def _expected(batches, names, key):
    data = np.concatenate([batches[n][b"data"] for n in names])
    labels = np.concatenate([batches[n][key] for n in names])
    return data, labels


def test_cifar10_reads_batches_in_order_with_channel_layout(cifar10_root):
    root, batches = cifar10_root
    x, y = load_cifar10(root, "train")
    data, labels = _expected(batches, [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert 0 <= x.min() and x.max() <= 1
    # pixel (c, i, j) of image k is byte c*1024 + i*32 + j of row k, divided by 255
    for k, c, i, j in [(0, 0, 0, 0), (5, 1, 3, 17), (19, 2, 31, 31), (11, 2, 0, 5)]:
        assert x[k, c, i, j].item() == pytest.approx(data[k, c * 1024 + i * 32 + j] / 255.0, abs=1e-7)
    assert torch.equal((x * 255).round().to(torch.uint8).flatten(1), torch.from_numpy(data))
    xt, yt = load_cifar10(root / "cifar-10-batches-py", "test")  # root may be the folder itself
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == batches["test_batch"][b"labels"]
    assert cifar10_class_names(root)[:3] == ["airplane", "automobile", "bird"]


def test_cifar100_fine_and_coarse_labels(cifar100_root):
    root, batches = cifar100_root
    x, y = load_cifar100(root, "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == batches["train"][b"fine_labels"]
    assert torch.equal((x * 255).round().to(torch.uint8).flatten(1), torch.from_numpy(batches["train"][b"data"]))
    _, yc = load_cifar100(root / "cifar-100-python", "test", label="coarse")
    assert yc.tolist() == batches["test"][b"coarse_labels"]
    assert len(cifar100_class_names(root)) == 100 and cifar100_class_names(root, "coarse")[19] == "coarse19"
    with pytest.raises(ValueError, match="label"):
        load_cifar100(root, "train", label="medium")
    with pytest.raises(ValueError, match="split"):
        load_cifar100(root, "val")


def test_cifar_missing_folder_names_path_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and CIFAR10_URL in message
    with pytest.raises(FileNotFoundError) as err:
        load_cifar100(tmp_path, "test")
    assert str(tmp_path / "cifar-100-python") in str(err.value) and CIFAR100_URL in str(err.value)


def test_cifar_missing_file_is_named(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(root, "train")
    load_cifar10(root, "test")  # the test split does not need it


def test_cifar_corrupted_files_raise_clear_errors(cifar10_root):
    root, batches = cifar10_root
    folder = root / "cifar-10-batches-py"
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])  # truncated download
    with pytest.raises(ValueError, match="data_batch_2.*(corrupted|readable)"):
        load_cifar10(root, "train")
    bad = {**batches["test_batch"], b"data": np.zeros((3, 100), np.uint8)}
    _dump(folder / "test_batch", bad)
    with pytest.raises(ValueError, match="test_batch is corrupted.*data"):
        load_cifar10(root, "test")
    _dump(folder / "test_batch", {b"data": batches["test_batch"][b"data"]})  # no labels
    with pytest.raises(ValueError, match="no 'labels'"):
        load_cifar10(root, "test")
    _dump(folder / "test_batch", {**batches["test_batch"], b"labels": [0, 10, 1]})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        load_cifar10(root, "test")
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(root, "test")


class _Payload:
    """Unpickling this would create a file: the restricted unpickler must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_cifar_refuses_pickles_that_run_code(cifar10_root):
    root, _ = cifar10_root
    marker = root / "pwned"
    _dump(root / "cifar-10-batches-py" / "test_batch", {b"data": _Payload(marker), b"labels": []})
    with pytest.raises(ValueError, match="not allowed"):
        load_cifar10(root, "test")
    assert not marker.exists()


def test_load_dataset_cifar(cifar10_root, cifar100_root, monkeypatch):
    root, _ = cifar10_root
    x, y, info = load_dataset("cifar10", "test", data_dir=root)
    assert x.shape == (3, 3, 32, 32) and info.num_classes == 10 and info.input_shape == (3, 32, 32)
    assert info.augment and isinstance(info.augmentation(), RandomCropFlip) and len(info.mean) == 3
    assert info.class_names[-1] == "truck"
    monkeypatch.setenv("FASTROBUST_DATA_DIR", str(root))
    _, yc, info = load_dataset("cifar100", "train", label="coarse")
    assert info.num_classes == 20 and int(yc.max()) < 20 and info.augment
    monkeypatch.delenv("FASTROBUST_DATA_DIR")
    monkeypatch.chdir(root)
    with pytest.raises(FileNotFoundError, match="data"):  # default ./data
        load_dataset("cifar10")


# --------------------------------------------------------------------------------------------
# synthetic

def test_synthetic_shapes_dtypes_range_and_determinism():
    x, y = synthetic_dataset(1000, seed=3)
    assert x.shape == (1000, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and 0 <= y.min() and y.max() < 10
    assert torch.bincount(y).tolist() == [100] * 10  # balanced
    x2, y2 = synthetic_dataset(1000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(synthetic_dataset(1000, seed=4)[0], x)
    xv, yv = synthetic_dataset(7, shape=(5,), num_classes=3)
    assert xv.shape == (7, 5) and torch.bincount(yv).tolist() == [3, 2, 2]
    assert synthetic_dataset(4, shape=(2, 3, 4, 5))[0].shape == (4, 2, 3, 4, 5)
    assert synthetic_dataset(0)[0].shape == (0, 3, 32, 32)
    mean, std = synthetic_pixel_stats()
    assert x.mean().item() == pytest.approx(mean, abs=0.01) and x.std().item() == pytest.approx(std, abs=0.01)
    with pytest.raises(ValueError, match="noise"):
        synthetic_dataset(4, noise=1.5)


def test_synthetic_is_learnable_and_splits_share_classes():
    x, y = synthetic_dataset(2000, shape=(3, 8, 8), seed=1, noise=0.8)
    xt, yt = synthetic_dataset(1000, shape=(3, 8, 8), seed=1, noise=0.8, split="test")
    assert not torch.equal(xt, x[:1000])
    means = torch.stack([x[y == c].mean(0) for c in range(10)]).flatten(1)
    accuracy = (torch.cdist(xt.flatten(1), means).argmin(1) == yt).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1
    # a different seed has different prototypes: its classes are not these
    xo, yo = synthetic_dataset(1000, shape=(3, 8, 8), seed=2, noise=0.8, split="test")
    assert (torch.cdist(xo.flatten(1), means).argmin(1) == yo).float().mean().item() < 0.3


# --------------------------------------------------------------------------------------------
# augmentation

def _reference_crop_flip(x, padding, generator):
    """Per-sample loop, with the draws random_crop_flip makes (offsets then flips)."""
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    out = []
    for i in range(n):
        crop = padded[i, :, offsets[0, i]:offsets[0, i] + h, offsets[1, i]:offsets[1, i] + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out), offsets, flips


def _unique_images(n, c=2, h=6, w=5):
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)


def test_crop_flip_matches_per_sample_reference():
    x = _unique_images(64)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    expected, offsets, flips = _reference_crop_flip(x, 2, torch.Generator().manual_seed(5))
    assert torch.equal(out, expected)
    assert 0 < flips.sum() < 64 and offsets.min() == 0 and offsets.max() == 4


def test_crop_flip_specific_pixels():
    x = torch.arange(1.0, 21.0).view(1, 1, 4, 5)
    out = random_crop_flip(x, 1, torch.Generator().manual_seed(0))
    # recover the draws of this generator: offsets (row, col) then flip
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 3, (2, 1), generator=g)[:, 0].tolist()
    flip = bool(torch.randint(0, 2, (1,), generator=g))
    for i in range(4):
        for j in range(5):
            jj = 4 - j if flip else j
            si, sj = i + oy - 1, jj + ox - 1  # source pixel in the unpadded image
            inside = 0 <= si < 4 and 0 <= sj < 5
            assert out[0, 0, i, j].item() == (x[0, 0, si, sj].item() if inside else 0.0)


def test_crop_flip_every_output_is_a_window_of_the_padded_input():
    """Independent of how the draws are made: each image is one of the (2p+1)^2 windows of the
    zero-padded input, flipped or not, and all windows and both flips occur."""
    p, n = 2, 1500
    x = _unique_images(n, c=1, h=4, w=4)
    out = random_crop_flip(x, p, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (p,) * 4)
    seen = set()
    for i in range(n):
        hits = [(a, b, f) for a in range(2 * p + 1) for b in range(2 * p + 1) for f in (0, 1)
                if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, a:a + 4, b:b + 4]))]
        assert len(hits) >= 1, i
        seen.update(hits)
    assert {(a, b) for a, b, _ in seen} == {(a, b) for a in range(5) for b in range(5)}
    assert {f for _, _, f in seen} == {0, 1}


def test_crop_flip_flips_about_half_and_padding_zero_is_identity_crop():
    x = _unique_images(4000, c=1, h=3, w=3)
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(2))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped ^ same).all())  # no crop at padding 0, only flips
    assert 0.45 < flipped.float().mean().item() < 0.55
    assert torch.equal(random_crop_flip(x, 0, flip=False), x)


def test_crop_flip_keeps_dtype_layout_and_is_deterministic():
    for dtype in (torch.float32, torch.float16, torch.uint8):
        x = (torch.rand(8, 3, 10, 10) * 200).to(dtype)
        out = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert torch.equal(out, random_crop_flip(x, generator=torch.Generator().manual_seed(0)))
        assert not torch.equal(out, random_crop_flip(x, generator=torch.Generator().manual_seed(1)))
    xcl = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = random_crop_flip(xcl, generator=torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, random_crop_flip(xcl.contiguous(), generator=torch.Generator().manual_seed(0)))
    assert random_crop_flip(torch.rand(0, 3, 8, 8)).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop_flip(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(torch.rand(1, 3, 8, 8), padding=-1)


@pytest.mark.cuda
def test_crop_flip_on_cuda_matches_reference():
    x = _unique_images(256).cuda()
    g = torch.Generator(device="cuda").manual_seed(3)
    out = random_crop_flip(x, 4, g)
    assert out.is_cuda and out.shape == x.shape
    gr = torch.Generator(device="cuda").manual_seed(3)
    offsets = torch.randint(0, 9, (2, 256), generator=gr, device="cuda").cpu()
    flips = torch.randint(0, 2, (256,), generator=gr, device="cuda").cpu().bool()
    padded = torch.nn.functional.pad(x.cpu(), (4,) * 4)
    for i in range(0, 256, 17):
        crop = padded[i, :, offsets[0, i]:offsets[0, i] + 6, offsets[1, i]:offsets[1, i] + 5]
        assert torch.equal(out[i].cpu(), crop.flip(-1) if flips[i] else crop)
    # a CPU generator drives CUDA data too
    assert torch.equal(random_crop_flip(x, 4, torch.Generator().manual_seed(0)).cpu(),
                       random_crop_flip(x.cpu(), 4, torch.Generator().manual_seed(0)))


# --------------------------------------------------------------------------------------------
# loader

def _ids(batches):
    return torch.cat([xb[:, 0].long() for xb, _ in batches])


def _loader(n=10, **kwargs):
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    return TensorLoader(x, torch.arange(n) % 3, **kwargs)


def test_loader_covers_every_sample_once_and_reshuffles_each_epoch():
    loader = _loader(10, batch_size=3, seed=4)
    assert len(loader) == 4
    epoch0, epoch1 = list(loader), list(loader)
    assert [len(yb) for _, yb in epoch0] == [3, 3, 3, 1]
    ids0, ids1 = _ids(epoch0), _ids(epoch1)
    assert sorted(ids0.tolist()) == list(range(10)) and sorted(ids1.tolist()) == list(range(10))
    assert not torch.equal(ids0, ids1)
    for xb, yb in epoch0:  # labels travel with their samples
        assert torch.equal(yb, xb[:, 0].long() % 3)
    again = _loader(10, batch_size=3, seed=4)
    assert torch.equal(_ids(again), ids0)
    again.set_epoch(1)
    assert torch.equal(_ids(again), ids1) and again.epoch == 2
    assert not torch.equal(_ids(_loader(10, batch_size=3, seed=5)), ids0)
    assert _ids(_loader(10, batch_size=4, shuffle=False)).tolist() == list(range(10))


def test_loader_drop_last():
    loader = _loader(10, batch_size=3, drop_last=True)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [3, 3, 3] and len(set(_ids(batches).tolist())) == 9
    assert len(_loader(9, batch_size=3, drop_last=True)) == 3


@pytest.mark.parametrize("n,world_size", [(12, 3), (10, 3), (7, 2), (5, 5)])
def test_loader_shards_are_disjoint_equal_and_cover_the_epoch(n, world_size):
    base = _loader(n, batch_size=2, seed=9)
    for epoch in (0, 3):
        parts = []
        for rank in range(world_size):
            shard = base.shard(rank, world_size)
            shard.set_epoch(epoch)
            assert len(shard) == -(-(n // world_size) // 2)
            parts.append(_ids(list(shard)).tolist())
        assert all(len(p) == n // world_size for p in parts)
        union = [i for p in parts for i in p]
        assert len(set(union)) == len(union) == (n // world_size) * world_size
        # every rank takes its positions of the same epoch permutation
        perm = base.permutation(epoch)[: len(union)]
        for rank, part in enumerate(parts):
            assert part == perm[rank::world_size].tolist()
    if n % world_size == 0:
        assert sorted(union) == list(range(n))
    with pytest.raises(ValueError, match="rank"):
        base.shard(world_size, world_size)


def test_loader_applies_augmentation_per_batch_deterministically():
    x = _unique_images(40)
    calls = []

    def augment(xb, generator=None):
        calls.append(xb.shape[0])
        return random_crop_flip(xb, 1, generator)

    a = TensorLoader(x, torch.zeros(40, dtype=torch.long), 16, augment=augment, seed=1)
    b = TensorLoader(x, torch.zeros(40, dtype=torch.long), 16, augment=RandomCropFlip(1), seed=1)
    batches_a, batches_b = list(a), list(b)
    assert calls == [16, 16, 8]
    for (xa, _), (xb, _) in zip(batches_a, batches_b):
        assert torch.equal(xa, xb)
    plain = list(TensorLoader(x, torch.zeros(40, dtype=torch.long), 16, seed=1))
    assert not all(torch.equal(p, q) for (p, _), (q, _) in zip(plain, batches_a))
    assert not torch.equal(list(b)[0][0], batches_b[0][0])  # epoch 1 draws anew


def test_loader_argument_errors():
    with pytest.raises(ValueError, match="first dimension"):
        TensorLoader(torch.rand(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(torch.rand(4, 2), torch.zeros(4), batch_size=0)
    with pytest.raises(ValueError, match="world_size"):
        TensorLoader(torch.rand(2, 2), torch.zeros(2), world_size=3, rank=0)


# --------------------------------------------------------------------------------------------
# registry

def test_load_dataset_registry():
    with pytest.raises(ValueError) as err:
        load_dataset("mnist")
    assert all(name in str(err.value) for name in DATASETS)
    x, y, info = load_dataset("synthetic", "test", n=50, shape=(1, 4, 4), num_classes=5)
    assert x.shape == (50, 1, 4, 4) and int(y.max()) < 5 and info.num_classes == 5
    assert info.input_shape == (1, 4, 4) and len(info.mean) == 1 and not info.augment and info.augmentation() is None
    with pytest.raises(TypeError, match="unexpected options"):
        load_dataset("synthetic", size=3)
    pytest.importorskip("sklearn")
    x, y, info = load_dataset("digits", "test")
    assert x.shape == (359, 1, 8, 8) and info.num_classes == 10 and info.input_shape == (1, 8, 8)
    assert not info.augment
    full = torch.cat([load_digits("train")[0], x])
    assert info.mean[0] == pytest.approx(full.mean().item(), abs=1e-3)
    assert info.std[0] == pytest.approx(full.std().item(), abs=1e-3)
