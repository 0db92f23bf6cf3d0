import os

import pytest
import torch

from properties_support import slow_mode


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="run the tests marked `slow`, and the property tests with 2,000 examples each "
                          "(same as FASTROBUST_SLOW=1)")


def pytest_configure(config):
    # Before the test modules are imported: tests/properties_support.py reads it for its example count.
    if config.getoption("--slow"):
        os.environ["FASTROBUST_SLOW"] = "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped when no GPU is visible; tests marked `slow` unless
    `--slow` is given or FASTROBUST_SLOW=1."""
    skip_slow = pytest.mark.skip(reason="slow: run with --slow or FASTROBUST_SLOW=1")
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if item.get_closest_marker("slow") is not None and not slow_mode():
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seeded_rng():
    """Every test starts from the same RNG state and leaves it as it found it."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: its tiny models run faster so on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): from then on every write under `folder` fails with EROFS, as on a
    read-only mount (the tests may run as root, whom chmod does not stop). Covers the ways the
    package writes: open / io.open, os.open (tempfile), os.mkdir (os.makedirs), os.replace,
    os.rename, os.unlink."""
    import builtins
    import errno
    import io
    import os

    roots = []

    def inside(path) -> bool:
        if isinstance(path, int):
            return False
        p = os.path.abspath(os.fsdecode(path))
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "remove")}
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def guard(name):
        def fake(*paths, **kwargs):
            for p in paths[:2]:
                if isinstance(p, (str, bytes, os.PathLike)) and inside(p):
                    refuse(p)
            return real[name](*paths, **kwargs)
        return fake

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in ("mkdir", "replace", "rename", "unlink", "remove"):
        monkeypatch.setattr(os, name, guard(name))
    return lambda folder: roots.append(os.path.abspath(os.fspath(folder)))


class FullDiskFile:
    """A file that takes `room` bytes and then fails every write with ENOSPC (what a full disk
    does); close() releases the real file underneath."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        import errno
        import os

        n = len(memoryview(data).cast("B"))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(data)

    def flush(self):
        self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(room): checkpoints are written to a disk with `room` bytes left (the failure
    comes from inside torch.save, as on a real full disk)."""
    import os

    from fastrobust.train import checkpoint

    def fill(room: int) -> None:
        monkeypatch.setattr(checkpoint, "_open_for_writing", lambda fd: FullDiskFile(os.fdopen(fd, "wb"), room))
    return fill


@pytest.fixture(scope="session")
def survey_checkpoint(tmp_path_factory):
    """A `fastrobust train` checkpoint of survey_cnn_mnist (ReLU, no denoising) after 10 epochs of
    standard training on digits, for the `fastrobust detect` tests. None may write into its folder."""
    from fastrobust.cli import main

    out = tmp_path_factory.mktemp("survey") / "run"
    assert main(["train", "--data", "digits", "--model", "survey_cnn_mnist", "--activation", "relu", "--denoise",
                 "none", "--recipe", "standard", "--epochs", "10", "--no-eval", "--no-progress", "--no-plot",
                 "--eval-every", "0", "--out", str(out)]) == 0
    return out / "last.pt"


@pytest.fixture(scope="session")
def digits_model():
    """SmallCNN (width 16) trained for 10 epochs on the digits train split (about 96 % test
    accuracy, under a second on a CPU), frozen, in eval mode."""
    from fastrobust.data import load_digits
    from fastrobust.testing import train_digits_cnn

    x, y = load_digits("train")
    return train_digits_cnn(x, y, epochs=10)


@pytest.fixture(scope="session")
def survey_digits_model():
    """The detection survey's MNIST CNN (survey_cnn_mnist, with dropout) trained for 25 epochs
    with Adam (lr 2e-3) on the digits train split (about 98 % test accuracy), frozen, in eval
    mode. Shared by the detection tests: none may change it."""
    from fastrobust.data import load_digits
    from fastrobust.testing import train_digits_cnn

    x, y = load_digits("train")
    return train_digits_cnn(x, y, epochs=25, model="survey_cnn_mnist", lr=2e-3)


@pytest.fixture(scope="session")
def digits_test_set():
    """The digits test split (359 images, 1 x 8 x 8, in [0, 1])."""
    from fastrobust.data import load_digits

    return load_digits("test")
