"""HGD: the DUNet denoiser, the Denoised wrapper, the guidance losses, the training inputs and
the hgd recipe (the target classifier stays bit-identical; the guidance loss falls)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.models import Denoised, DUNet, SmallCNN
from fastrobust.train.guidance import default_feature_layer, feature_tap, guidance_loss
from fastrobust.train.hgd_pairs import KINDS, hgd_inputs
from fastrobust.train.recipes import StepContext, create_recipe

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


@pytest.mark.parametrize("make, shape", [(lambda: DUNet.small(1, 8), (2, 1, 7, 9)),
                                         (lambda: DUNet.small(3, 4), (1, 3, 8, 8)),
                                         (lambda: DUNet(3), (1, 3, 33, 31))])
def test_dunet_keeps_the_input_shape(make, shape):
    net = make().eval()
    assert net(torch.rand(shape)).shape == shape


def test_dunet_is_the_identity_with_a_zero_head():
    net = DUNet.small(3, 8).eval()
    nn.init.zeros_(net.head.weight)
    x = torch.rand(2, 3, 9, 11)
    assert torch.equal(net(x), x)
    assert net.head.bias is None and net.head.kernel_size == (1, 1)


def test_dunet_layout_is_the_official_one():
    net = DUNet(3)
    assert [len(s) for s in net.fwd] == [2, 3, 3, 3, 3] and [len(s) for s in net.back] == [2, 3, 3, 3]
    assert [s[0][0].stride for s in net.fwd] == [(1, 1)] + [(2, 2)] * 4
    # decoder inputs: the deepest 256 + 256, then back_out[i + 1] + fwd_out[i]
    assert [s[0][0].in_channels for s in net.back] == [128 + 64, 256 + 128, 256 + 256, 256 + 256]
    assert all(block[0].bias is None for stage in [*net.fwd, *net.back] for block in stage)


@pytest.mark.parametrize("kwargs, message", [
    (dict(widths=(8,), blocks=(1,), back_widths=(), back_blocks=()), "non-empty|length >= 2"),
    (dict(widths=(8, 16), blocks=(1, 1), back_widths=(8, 8), back_blocks=(1, 1)), "one stage fewer"),
    (dict(widths=(8, 0), blocks=(1, 1), back_widths=(8,), back_blocks=(1,)), "widths"),
])
def test_dunet_rejects_bad_layouts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DUNet(1, **kwargs)


class BNNet(nn.Module):
    """A classifier with BatchNorm (its statistics must not move while HGD trains)."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.linear = nn.Linear(8, 10)

    def forward(self, x):
        return self.linear(self.layer2(self.layer1(x)).mean((2, 3)))


def test_denoised_freezes_the_classifier():
    clf = BNNet()
    model = Denoised(DUNet.small(1, 4), clf).train()
    assert model.denoiser.training and not clf.training
    assert not any(p.requires_grad for p in clf.parameters())
    with pytest.raises(TypeError, match="classifier"):
        Denoised(DUNet.small(1, 4), "net")


def test_guidance_losses_equal_their_formulas():
    torch.manual_seed(0)
    clf = BNNet().eval()
    x, x_hat = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    y = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(guidance_loss("pixel", clf, x_hat, x), (x_hat - x).abs().mean())
    assert torch.allclose(guidance_loss("logits", clf, x_hat, x), (clf(x_hat) - clf(x)).abs().mean())
    assert torch.allclose(guidance_loss("class", clf, x_hat, x, y), F.cross_entropy(clf(x_hat), y))
    feats = lambda t: clf.layer2(clf.layer1(t))  # noqa: E731
    assert torch.allclose(guidance_loss("feature", clf, x_hat, x), (feats(x_hat) - feats(x)).abs().mean())
    assert torch.allclose(guidance_loss("feature", clf, x_hat, x, layer="layer1"),
                          (clf.layer1(x_hat) - clf.layer1(x)).abs().mean())
    # the gradient reaches x_hat only
    x_hat.requires_grad_(True)
    guidance_loss("feature", clf, x_hat, x).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="guide"):
        guidance_loss("bogus", clf, x_hat, x)
    with pytest.raises(ValueError, match="layer"):
        guidance_loss("feature", clf, x_hat, x, layer="nope")
    with pytest.raises(ValueError, match="y"):
        guidance_loss("class", clf, x_hat, x)


def test_default_feature_layer():
    assert default_feature_layer(SmallCNN()) == "layer2"
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    assert default_feature_layer(seq, torch.rand(1, 1, 8, 8)) == "1"  # the last 4-D output
    with pytest.raises(ValueError, match="layer"):
        default_feature_layer(seq)
    with feature_tap(seq, "0") as tap:
        seq(torch.rand(2, 1, 8, 8))
    assert tap["features"].shape == (2, 4, 6, 6)


def test_hgd_inputs_make_each_kind(digits_model, digits_test_set):
    x, y = digits_test_set
    x, y = x[:200], y[:200]
    gen = torch.Generator().manual_seed(0)
    x_in, kind = hgd_inputs(digits_model, x, y, gen, seed=0)
    assert set(kind.tolist()) == set(range(len(KINDS)))
    delta = (x_in - x).flatten(1).abs().amax(1)
    clean = kind == KINDS.index("clean")
    assert torch.equal(x_in[clean], x[clean])
    assert (delta <= 15 / 255 + 1e-6).all() and (x_in >= 0).all() and (x_in <= 1).all()
    # FGSM rows: one sign step of their eps on CE at the model's clean prediction
    rows = (kind == KINDS.index("fgsm")).nonzero()[:, 0]
    xr = x[rows].clone().requires_grad_(True)
    pred = digits_model(x[rows]).argmax(1)
    grad = torch.autograd.grad(F.cross_entropy(digits_model(xr), pred, reduction="sum"), xr)[0]
    step = (x_in[rows] - x[rows])
    eps = step.flatten(1).abs().amax(1)
    levels = eps * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3) and (levels.round() >= 1).all()
    moved = step != 0
    assert torch.equal(step.sign()[moved], grad.sign()[moved])
    with pytest.raises(ValueError, match="kinds"):
        hgd_inputs(digits_model, x, y, gen, kinds=("bogus",))
    with pytest.raises(ValueError, match="eps_levels"):
        hgd_inputs(digits_model, x, y, gen, eps_levels=(0, 3))


def test_hgd_recipe_trains_the_denoiser_only(digits_test_set):
    torch.manual_seed(0)
    x, y = digits_test_set
    clf = BNNet()
    clf(x[:64])  # some BatchNorm statistics to keep
    recipe = create_recipe("hgd", guide="feature", width=8)
    model = recipe.structure(clf, 10).train()
    before = copy.deepcopy(clf.state_dict())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(30):
        rows = torch.randint(len(y), (64,), generator=gen)
        out = recipe.batch_loss(model, x[rows], y[rows], StepContext(0, 1, step, 30, gen))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    after = clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm buffers
    assert sum(losses[-5:]) < sum(losses[:5])
    assert out.adv_logits.shape == (64, 10) and "guidance" in out.extras


@pytest.mark.parametrize("options, message", [
    (dict(guide="bogus"), "guide"), (dict(denoiser="unet"), "denoiser"), (dict(width=0), "width"),
    (dict(eps_levels=(3, 2)), "eps_levels"), (dict(label="x"), "label"), (dict(kinds=()), "kinds"),
])
def test_hgd_recipe_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_recipe("hgd", **options)


def test_hgd_others_are_loaded_frozen_and_attacked_as_an_ensemble(tmp_path, monkeypatch, digits_test_set):
    """others: each checkpoint rebuilt, frozen, and handed to hgd_inputs (which crafts on the
    LogitEnsemble of the target and them); a missing file is an error naming the option."""
    from fastrobust.train import TrainConfig, train
    import fastrobust.train.recipes.hgd as hgd_module

    cfg = TrainConfig(data="digits", model="small_cnn", model_options={"denoise": None}, recipe="standard",
                      epochs=1, max_steps_per_epoch=1, eval_every=0, final_eval=False, progress=False, plot=False,
                      out=str(tmp_path / "other"))
    train(cfg)
    x, y = digits_test_set
    recipe = create_recipe("hgd", width=4, others=[str(tmp_path / "other" / "last.pt")])
    recipe.attach_data(x[:8], y[:8])
    (other,) = recipe._other_models
    assert not other.training and not any(p.requires_grad for p in other.parameters())
    seen = {}

    def spy(target, x, y, generator, **kwargs):
        seen.update(kwargs)
        return x, torch.zeros(len(x), dtype=torch.long)

    monkeypatch.setattr(hgd_module, "hgd_inputs", spy)
    model = recipe.structure(BNNet(), 10)
    recipe.batch_loss(model, x[:8], y[:8], StepContext(0, 1, 0, 1, torch.Generator().manual_seed(0)))
    assert seen["others"] == (other,)
    with pytest.raises(ValueError, match="others: .*missing.pt"):
        create_recipe("hgd", others=[str(tmp_path / "missing.pt")]).attach_data(x[:8], y[:8])
    with pytest.raises(ValueError, match="others must be a list"):
        create_recipe("hgd", others="a.pt")


def test_hgd_prepare_needs_a_target():
    with pytest.raises(ValueError, match="target"):
        create_recipe("hgd").prepare(SmallCNN(), 10)


def test_cli_trains_a_denoiser_for_a_target_and_evaluates_it(tmp_path, capsys):
    """fastrobust train --recipe hgd --target CKPT takes the target's data and model, saves the
    Denoised model, and fastrobust eval rebuilds it without the target file."""
    import json

    from fastrobust.cli import main

    quick = ["--epochs", "1", "--max-steps-per-epoch", "2", "--no-progress", "--no-plot", "--eval-every", "0"]
    assert main(["train", "--data", "digits", "--model", "small_cnn", "--denoise", "none", "--recipe", "standard",
                 "--no-eval", *quick, "--out", str(tmp_path / "clf")]) == 0
    assert main(["train", "--data", "digits", "--model", "ode_net", "--model-options", '{"ode": "none"}', "--recipe",
                 "standard", "--no-eval", *quick, "--out", str(tmp_path / "other")]) == 0
    target, other = tmp_path / "clf" / "last.pt", tmp_path / "other" / "last.pt"
    options = json.dumps({"width": 4, "others": [str(other)]})
    assert main(["train", "--recipe", "hgd", "--recipe-options", options, "--target", str(target), *quick,
                 "--attacks", "none", "--checks", "none", "--out", str(tmp_path / "hgd")]) == 0
    config = json.loads((tmp_path / "hgd" / "config.json").read_text())
    assert config["model"] == "small_cnn" and config["recipe_options"]["target"] == str(target)
    assert config["recipe_options"]["others"] == [str(other)]
    assert "denoise" not in config["model_options"]  # the target's options, as trained
    # the official optimisation unless told otherwise: Adam, lr 0.01, x0.1 at 60 % and 90 %
    assert (config["optimizer"], config["lr"], config["milestones"]) == ("adam", 0.01, [0.6, 0.9])
    target.rename(tmp_path / "moved.pt")
    assert main(["eval", str(tmp_path / "hgd" / "last.pt"), "--attacks", "pgd20", "--n", "16", "--checks", "none",
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "hgd" / "eval" / "report.json").read_text())
    assert report["metadata"]["model_class"].endswith("Denoised")
    assert main(["eval", str(tmp_path / "hgd" / "last.pt"), "--oblivious", "--attacks", "pgd20", "--n", "16",
                 "--checks", "none", "--no-progress", "--out", str(tmp_path / "obl")]) == 0
    oblivious = json.loads((tmp_path / "obl" / "report.json").read_text())
    assert oblivious["metadata"]["attack_model"] == "SmallCNN" and oblivious["metadata"]["oblivious"] is True
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "moved.pt"), "--oblivious", "--no-progress"]) == 2
    assert "--oblivious: checkpoint" in capsys.readouterr().err
    capsys.readouterr()
    target = tmp_path / "moved.pt"
    for argv, message in ((["--recipe", "pgd"], "--target: the recipe 'pgd' builds on no trained classifier"),
                          (["--recipe", "hgd", "--model", "ode_net"], "--model ode_net: the --target classifier"),
                          (["--recipe", "hgd", "--activation", "relu"], "model options come from its checkpoint"),
                          (["--recipe", "hgd", "--data", "synthetic"], "--data synthetic: the --target classifier"),
                          (["--recipe", "hgd", "--recipe-options", '{"target": "x.pt"}'], "--target is given twice")):
        assert main(["train", *argv, "--target", str(target), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
