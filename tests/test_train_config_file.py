"""`fastrobust train --config FILE`: TOML and JSON files parsed into the TrainConfig, the
command line winning over the file (a scalar, a flag, the dict options), the file's ignored
keys, one-line errors naming the file and the key, and a run's config.json repeating the run
bit for bit."""
import json

import pytest
import torch

from fastrobust.cli import build_parser, main
from fastrobust.cli.errors import CLIError
from fastrobust.cli.train import SMALL_CNN_DENOISE, config_from_args
from fastrobust.train import load_checkpoint
from fastrobust.train.config import TrainConfig

QUICK = ["--data", "digits", "--recipe", "standard", "--epochs", "1", "--max-steps-per-epoch", "2", "--no-eval",
         "--no-progress", "--no-plot", "--eval-every", "0"]

TOML = """\
recipe = "trades"
epochs = 5
eps = "8/255"
nesterov = true
schedule = "piecewise"
milestones = [2, 4]
amp = "none"
out = "runs/from-file"
resume = true
overwrite = true

[model_options]
width = 16
activation = "relu"
denoise = ["layer2", "median"]

[recipe_options]
beta = 3.0
"""


def config(tmp_path, text, *argv, name="run.toml"):
    """The TrainConfig of `fastrobust train --config FILE *argv`, FILE holding text."""
    path = tmp_path / name
    path.write_text(text)
    return config_from_args(build_parser().parse_args(["train", "--config", str(path), *argv]))


def run_cli(argv, capsys):
    """(exit status, stderr) of main(argv)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_toml_file_is_parsed(tmp_path):
    c = config(tmp_path, TOML)
    assert (c.recipe, c.epochs, c.eps, c.nesterov, c.schedule, c.milestones, c.amp) == \
        ("trades", 5, pytest.approx(8 / 255), True, "piecewise", (2, 4), None)
    assert c.model_options == {"width": 16, "activation": "relu", "denoise": ["layer2", "median"]}
    assert c.recipe_options == {"beta": 3.0}
    assert c.out == "runs/from-file"  # the file's out is the default --out
    assert c.resume is False and c.overwrite is False  # an invocation's actions: ignored in a file
    assert c.final_eval is False  # the command line's default, as without a file


def test_json_file_is_parsed(tmp_path):
    c = config(tmp_path, json.dumps({"recipe": "pgd", "lr": 0.01, "amp": None, "data_options": {"seed": 1},
                                     "overfit_guard": None, "eval_samples": None}), name="run.json")
    assert (c.recipe, c.lr, c.amp, c.data_options, c.eval_samples) == ("pgd", 0.01, None, {"seed": 1}, None)


def test_command_line_wins_over_the_file(tmp_path):
    c = config(tmp_path, TOML, "--epochs", "7", "--no-nesterov", "--model-options", '{"width": 32}',
               "--recipe-options", '{"steps": 2}', "--out", str(tmp_path / "cli"))
    assert (c.epochs, c.nesterov, c.out) == (7, False, str(tmp_path / "cli"))
    # the dict options change the file's key by key
    assert c.model_options == {"width": 32, "activation": "relu", "denoise": ["layer2", "median"]}
    assert c.recipe_options == {"beta": 3.0, "steps": 2}
    assert config(tmp_path, "nesterov = false", "--nesterov").nesterov is True
    assert config(tmp_path, 'amp = "bf16"', "--amp", "none").amp is None


def test_model_flags_change_the_files_model_options(tmp_path):
    c = config(tmp_path, TOML, "--activation", "silu", "--denoise", "none", "--cifs", "--first-stride", "2")
    assert c.model_options == {"width": 16, "activation": "silu", "cifs": True, "first_stride": 2}
    c = config(tmp_path, '[model_options]\ncifs = true', "--no-cifs", "--denoise", "layer3:gaussian")
    assert c.model_options == {"denoise": ("layer3", "gaussian")}


def test_model_defaults_only_without_model_options_in_the_file(tmp_path):
    """config.json records the model options complete: a file's are not topped up with the
    command line's defaults (sparta, the small CNN's denoising block)."""
    assert config(tmp_path, "epochs = 2").model_options == {"activation": "sparta", "denoise": SMALL_CNN_DENOISE}
    assert config(tmp_path, "[model_options]\nwidth = 8").model_options == {"width": 8}


@pytest.mark.parametrize("name, text, expected", [
    ("run.toml", "epoch = 3\n", "unknown option 'epoch' (did you mean 'epochs'?)"),
    ("run.toml", "activation = 'relu'\n", "unknown option 'activation' (it goes in model_options)"),
    ("run.toml", "epochs = 'five'\n", "epochs must be an integer >= 1, got 'five'"),
    ("run.toml", "nesterov = 1\n", "nesterov must be True or False, got 1"),
    ("run.toml", "recipe = 'pgdd'\n", "recipe: unknown recipe 'pgdd'"),
    ("run.toml", "eps = 'big'\n", "eps: expected a number such as 0.15 or 8/255"),
    ("run.toml", "epochs = 3\nlr = \n", "not valid TOML: Invalid value (at line 2, column 6)"),
    ("run.json", '{"epochs": 3,\n "lr": }', "not valid JSON: Expecting value (at line 2, column 8)"),
    ("run.json", "[1, 2]", "expected a JSON object of options, got list"),
    ("run.json", '{"model": "<module Net>"}', "model '<module Net>' is a custom nn.Module"),
    ("run.yaml", "epochs: 3\n", "expected a .toml or .json file"),
])
def test_file_errors_name_the_file_and_the_key(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    code, err = run_cli(["train", "--config", path, *QUICK, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err.startswith(f"fastrobust train: error: --config {path}: ") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    with pytest.raises(CLIError, match=r"--config .*nothing\.toml: No such file or directory"):
        config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "nothing.toml")]))


def test_config_json_repeats_the_run(tmp_path, capsys):
    """A run's config.json as --config, with only another --out (and --no-eval, the evaluation
    being no TrainConfig option): the same resolved options, and on the CPU the same weights."""
    first, second = tmp_path / "first", tmp_path / "second"
    code, err = run_cli(["train", *QUICK, "--out", first], capsys)
    assert code == 0, err
    code, err = run_cli(["train", "--config", first / "config.json", "--no-eval", "--out", second], capsys)
    assert code == 0, err
    configs = [TrainConfig.from_dict(json.loads((out / "config.json").read_text())) for out in (first, second)]
    assert configs[0].fingerprint() == configs[1].fingerprint()
    a, b = (load_checkpoint(out / "last.pt") for out in (first, second))
    assert a["fingerprint"] == b["fingerprint"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # without --out the file's out, which holds the first run: refused, nothing written
    code, err = run_cli(["train", "--config", first / "config.json"], capsys)
    assert code == 2 and f"{first}: holds a run" in err


def test_help_shows_config(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--config runs/quick/config.json --out runs/again" in capsys.readouterr().out
