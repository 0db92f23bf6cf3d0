"""`fastrobust eval --model SPEC` / `--model-file PATH.py:FACTORY`: any model evaluated from the
command line, its weights from a local file (fastrobust.cli.model_spec). The third-party sources
(torchvision, timm, robustbench) are checked against stand-in modules where the packages are
missing, and torchvision for real where it is installed."""
import enum
import hashlib
import json
import sys
import types

import pytest
import torch
from torch import nn

from fastrobust.cli.errors import CLIError
from fastrobust.cli.model_spec import build_model, check_fits, with_normalization
from fastrobust.data import load_dataset
from fastrobust.models import create
from fastrobust.testing import run_cli

QUICK = ["--checks", "none", "--no-progress", "--eps", "0.1"]

FACTORY = '''
from torch import nn


def make(num_classes=10):
    """A small CNN for 1x8x8 digits."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, num_classes))
'''


def assert_one_line_error(code, err, expected):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fastrobust eval: error: ") and expected in lines[0], err


def make_model():
    namespace = {}
    exec(FACTORY, namespace)
    return namespace["make"](num_classes=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The factory file, weights of its CNN after a few training steps on the digits, and the
    accuracy of those weights on the first 16 test digits, computed here directly."""
    folder = tmp_path_factory.mktemp("any_model")
    (folder / "tiny.py").write_text(FACTORY)
    torch.manual_seed(0)
    model = make_model()
    x, y, _ = load_dataset("digits", "train")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        rows = slice(64 * step % (len(x) - 64), 64 * step % (len(x) - 64) + 64)
        loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = model.state_dict()
    torch.save(state, folder / "weights.pt")
    xt, yt, _ = load_dataset("digits", "test")
    with torch.no_grad():
        accuracy = (model.eval()(xt[:16]).argmax(1) == yt[:16]).float().mean().item()
    assert accuracy > 0.5  # trained: a weight file that did not load would show
    return {"folder": folder, "file": folder / "tiny.py", "weights": folder / "weights.pt", "state": state,
            "accuracy": accuracy}


def test_model_file_with_weights_gives_the_direct_accuracy(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["eval", "--model-file", f"{tiny['file']}:make", "--weights", tiny["weights"],
                                 "--data", "digits", "--attacks", "pgd20", "--n", "16", *QUICK, "--out", out], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 16 and report["clean_accuracy"] == pytest.approx(tiny["accuracy"])
    assert [a["name"] for a in report["attacks"]] == ["pgd20"] and "| pgd20 |" in stdout
    meta = report["metadata"]
    assert meta["model_spec"] == f"file:{tiny['file']}:make"
    assert meta["weights"] == str(tiny["weights"])
    assert meta["weights_sha256"] == hashlib.sha256(tiny["weights"].read_bytes()).hexdigest()
    assert "WARNING" not in err


def test_data_parallel_prefix_and_state_dict_layout(tiny, tmp_path, capsys):
    """A DataParallel "module." prefix is stripped; the state_dict may sit under "state_dict"."""
    path = tmp_path / "dp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny["state"].items()}}, path)
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", "--model-file", f"{tiny['file']}:make", "--weights", path, "--data", "digits",
                            "--attacks", "none", "--n", "16", *QUICK, "--out", out], capsys)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["clean_accuracy"] == pytest.approx(tiny["accuracy"])


def test_fastrobust_registry_spec_and_default_out(tmp_path, monkeypatch, capsys):
    torch.save(create("small_cnn", num_classes=10, in_channels=1).state_dict(), tmp_path / "small.pt")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["eval", "--model", "fastrobust:small_cnn", "--weights", "small.pt", "--data", "digits",
                            "--attacks", "none", "--n", "8", *QUICK], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval-fastrobust-small_cnn" / "report.json").read_text())
    assert report["metadata"]["model_spec"] == "fastrobust:small_cnn"
    assert report["metadata"]["weights"] == str(tmp_path / "small.pt")


def test_without_weights_the_initialised_model_is_evaluated_with_a_warning(tiny, tmp_path, capsys):
    code, _, err = run_cli(["eval", "--model-file", f"{tiny['file']}:make", "--data", "digits", "--attacks", "none",
                            "--n", "8", *QUICK, "--out", tmp_path / "eval"], capsys)
    assert code == 0 and "WARNING: no --weights" in err, err
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["metadata"]["weights"] is None


def test_torchvision_resnet18_on_synthetic(tmp_path, capsys):
    models = pytest.importorskip("torchvision.models")
    torch.save(models.resnet18(num_classes=4).state_dict(), tmp_path / "resnet18.pt")
    code, _, err = run_cli(["eval", "--model", "torchvision:resnet18", "--weights", tmp_path / "resnet18.pt",
                            "--data", "synthetic", "--data-options", '{"n": 8, "num_classes": 4}', "--num-classes",
                            "4", "--attacks", "none", *QUICK, "--out", tmp_path / "eval"], capsys)
    assert code == 0, err


def test_missing_key_is_a_one_line_error(tiny, tmp_path, capsys):
    state = dict(tiny["state"])
    del state["3.bias"]
    torch.save(state, tmp_path / "partial.pt")
    code, _, err = run_cli(["eval", "--model-file", f"{tiny['file']}:make", "--weights", tmp_path / "partial.pt",
                            "--data", "digits", *QUICK, "--out", tmp_path / "eval"], capsys)
    assert_one_line_error(code, err, "does not fit --model-file")
    assert "missing [3.bias]" in err and str(tmp_path / "partial.pt") in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("argv, expected", [
    (["last.pt", "--model", "fastrobust:small_cnn", "--data", "digits"], "not CHECKPOINT and --model"),
    (["--model", "fastrobust:small_cnn", "--model-file", "x.py:make", "--data", "digits"], "give one model"),
    (["last.pt", "--weights", "w.pt"], "--weights: goes with --model or --model-file"),
    (["--model", "fastrobust:small_cnn", "--data", "digits", "--checks", "none"], "--eps: required with --model"),
    (["--model", "fastrobust:small_cnn", "--eps", "0.1"], "--model needs --data"),
    (["--model", "fastrobust:small_cnn", "--data", "digits", "--eps", "0.1", "--oblivious"], "--oblivious"),
    (["--model", "resnet18", "--data", "digits", "--eps", "0.1"], "argument --model: expected SOURCE:NAME"),
    (["--model", "fastrobust:nonet", "--data", "digits", "--eps", "0.1"], "unknown model 'nonet'"),
    (["--model", "timm:resnet18", "--data", "digits", "--eps", "0.1"], "pip install timm"),
    (["--model-file", "nofile.py", "--data", "digits", "--eps", "0.1"], "expected PATH.py:FACTORY"),
    (["--model-file", "{file}:nothing", "--data", "digits", "--eps", "0.1"], "defines no function or class"),
    (["--model-file", "{file}:make", "--data", "synthetic", "--data-options", '{"n": 4}', "--eps", "0.1"],
     "does not take --data synthetic images of shape (3, 32, 32)"),
    (["--model-file", "{file}:make", "--data", "digits", "--num-classes", "3", "--eps", "0.1"],
     "expected logits of shape (1, K) with K >= 10"),
    (["--model-file", "{file}:make", "--data", "digits", "--eps", "0.1", "--weights", "{folder}/none.pt"],
     "--weights"),
    (["--model-file", "{file}:make", "--data", "digits", "--eps", "0.1", "--mean", "0.5"],
     "give --mean and --std together"),
    (["--model-file", "{file}:make", "--data", "digits", "--eps", "0.1", "--mean", "0", "0", "--std", "1", "1"],
     "--mean: 2 values for 1-channel data"),
    (["--model-file", "{file}:make", "--data", "digits", "--data-options", '{"bogus": 1}', "--eps", "0.1"],
     "--data-options: load_dataset('digits')"),
])
def test_option_errors_are_one_line(argv, expected, tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    argv = [a.replace("{file}", str(tiny["file"])).replace("{folder}", str(tiny["folder"])) for a in argv]
    code, _, err = run_cli(["eval", *argv, "--no-progress"], capsys)
    assert_one_line_error(code, err, expected)


def test_mean_std_wrapping_equals_normalising_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    x = torch.rand(2, 3, 8, 8)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    by_hand = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(with_normalization(model, mean, std, 3)(x), by_hand)
    one = with_normalization(model, [0.5], [0.2], 3)  # one value for every channel
    torch.testing.assert_close(one(x), model((x - 0.5) / 0.2))
    assert with_normalization(model, None, None, 3) is model  # default: no normalisation


def test_check_fits_accepts_a_tuple_output():
    class Probed(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10), [torch.zeros(x.shape[0], 10)]

    check_fits(Probed(), torch.rand(2, 1, 8, 8), 10, "--model-file m.py:f", "digits")


# -- the third-party sources, against stand-in modules -------------------------------------------

def _module(monkeypatch, name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_torchvision_and_timm_calls(monkeypatch):
    calls = []

    def record(source):
        def build(name, **kwargs):
            calls.append((source, name, kwargs))
            return nn.Linear(1, kwargs["num_classes"])
        return build

    _module(monkeypatch, "torchvision")
    _module(monkeypatch, "torchvision.models", get_model=record("torchvision"))
    _module(monkeypatch, "timm", create_model=record("timm"))
    build_model("torchvision:resnet18", "cifar10", (3, 32, 32), 10, False)
    build_model("timm:vit_tiny", "digits", (1, 8, 8), 7, True)
    assert calls == [("torchvision", "resnet18", {"weights": None, "num_classes": 10}),
                     ("timm", "vit_tiny", {"pretrained": False, "num_classes": 7, "in_chans": 1})]


def test_robustbench_zoo_architectures(monkeypatch):
    class BenchmarkDataset(enum.Enum):
        cifar_10 = "cifar10"
        cifar_100 = "cifar100"

    class ThreatModel(enum.Enum):
        Linf = "Linf"
        L2 = "L2"

    zoo = {BenchmarkDataset.cifar_10: {ThreatModel.Linf: {"Tiny": {"model": lambda: nn.Linear(2, 10),
                                                                     "gdrive_id": "never fetched"}},
                                       ThreatModel.L2: {"Other": {"model": lambda: nn.Linear(3, 10)}}}}
    for name in ("robustbench", "robustbench.model_zoo"):
        _module(monkeypatch, name)
    _module(monkeypatch, "robustbench.model_zoo.models", model_dicts=zoo)
    _module(monkeypatch, "robustbench.model_zoo.enums", BenchmarkDataset=BenchmarkDataset, ThreatModel=ThreatModel)
    assert build_model("robustbench:Tiny", "cifar10", (3, 32, 32), 10, False).in_features == 2
    assert build_model("robustbench:cifar10/L2/Other", "synthetic", (3, 32, 32), 10, False).in_features == 3
    with pytest.raises(CLIError, match="'Other' is not in robustbench's cifar10 Linf model zoo"):
        build_model("robustbench:Other", "cifar10", (3, 32, 32), 10, False)
    with pytest.raises(CLIError, match="robustbench has no digits Linf model zoo"):
        build_model("robustbench:Tiny", "digits", (1, 8, 8), 10, False)
    with pytest.raises(CLIError, match="--num-classes"):
        build_model("robustbench:Tiny", "cifar10", (3, 32, 32), 10, True)


def test_robustbench_missing_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    with pytest.raises(CLIError, match="pip install robustbench, or give the architecture with --model-file"):
        build_model("robustbench:Tiny", "cifar10", (3, 32, 32), 10, False)
