"""The recipes fat, trades, fgsm, iat, spat and thrm (fastrobust.train.recipes).

- each trains a SmallCNN on sklearn digits for a few epochs well above chance;
- the FGSM tricks do what they claim: the pixel mask zeroes the stated fraction of pixels of
  the gradient input (and only there), the first-conv regulariser is in the loss and its gradient;
- the IAT, SPAT, THRM (and TRADES) losses equal values written out with plain torch ops on
  fixed tensors and a fixed tiny model, with the attacks replaced by fakes returning fixed points;
- FAT's tau schedule, option errors, the attack arguments taken from the step context.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.data import load_digits
from fastrobust.data.digits import MEAN, STD
from fastrobust.models import SmallCNN
from fastrobust.train.recipes import RECIPES, StepContext, create_recipe
from fastrobust.train.recipes import fat, fgsm, iat, losses, spat, thrm, trades

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")

MINE = ("fat", "trades", "fgsm", "iat", "spat", "thrm")


def ctx_for(seed=0, epoch=0, epochs=1, step=0, steps_per_epoch=1, **kw):
    return StepContext(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch,
                       generator=torch.Generator().manual_seed(seed), **kw)


# ---------------------------------------------------------------------------------------------
# hand-computation helpers: plain torch ops only (no F.* losses, no fastrobust helpers)


def log_softmax_plain(z):
    shifted = z - z.max(dim=1, keepdim=True).values
    return shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))


def ce_plain(z, y):
    return -log_softmax_plain(z)[torch.arange(len(y)), y].mean()


def kl_plain(z_p, z_q):
    """mean_i sum_j p_ij (log p_ij - log q_ij)."""
    lp, lq = log_softmax_plain(z_p), log_softmax_plain(z_q)
    return (torch.exp(lp) * (lp - lq)).sum(dim=1).mean()


class Tiny(nn.Module):
    """flatten - Linear(4, 5) - tanh - Linear(5, 3); float64, no BatchNorm/dropout (train == eval)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.hidden = nn.Linear(4, 5).double()
        self.out = nn.Linear(5, 3).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def features(self, x):
        return torch.tanh(x.flatten(1) @ self.hidden.weight.t() + self.hidden.bias)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x.flatten(1))))


X = torch.tensor([[0.1, 0.9, 0.4, 0.3], [0.8, 0.2, 0.6, 0.5], [0.3, 0.3, 0.9, 0.1], [0.7, 0.5, 0.2, 0.8]],
                 dtype=torch.float64).reshape(4, 1, 2, 2)
X_ADV = (X + torch.tensor([[0.05, -0.05, 0.05, 0.05], [-0.05, 0.05, -0.05, 0.05], [0.05, 0.05, -0.05, -0.05],
                           [-0.05, -0.05, 0.05, -0.05]], dtype=torch.float64).reshape(4, 1, 2, 2)).clamp(0, 1)
Y = torch.tensor([0, 2, 1, 2])


def fake_attack(x_out, record):
    """An attack class whose instances return x_out; records the constructor's arguments."""

    class Fake:
        def __init__(self, model, **kwargs):
            record.update(kwargs)
            record["model"] = model

        def __call__(self, x, y):
            record["x"], record["y"] = x, y
            return x_out.clone()

    return Fake


# ---------------------------------------------------------------------------------------------
# registry and options


def test_recipes_are_registered_with_paper_defaults():
    assert set(MINE) <= set(RECIPES)
    r = create_recipe("fat")
    assert (r.eps, r.alpha, r.steps, r.omega, r.trades) == (0.031, 0.007, 10, 0.001, False)
    r = create_recipe("fat", trades=True)
    assert (r.omega, r.beta) == (0.0, 6.0)
    r = create_recipe("trades")
    assert (r.eps, r.alpha, r.steps, r.beta) == (0.031, 0.007, 10, 6.0)
    r = create_recipe("fgsm")
    assert r.eps == 8 / 255 and r.alpha == pytest.approx(1.25 * 8 / 255) and r.random_start
    assert (r.mask_ratio, r.first_conv_reg) == (0.0, 0.0)
    assert create_recipe("fgsm", eps=0.1).alpha == pytest.approx(0.125)
    r = create_recipe("iat")
    assert (r.eps, r.alpha, r.steps, r.mixup_alpha) == (8 / 255, 2 / 255, 7, 1.0)
    r = create_recipe("spat")
    assert (r.eps, r.alpha, r.steps, r.beta, r.s, r.m, r.n) == (0.031, 0.007, 10, 6.0, 8.0, 0.2, 0.2)
    r = create_recipe("thrm")
    assert (r.eps, r.alpha, r.steps, r.beta) == (8 / 255, 2 / 255, 10, 6.0)


@pytest.mark.parametrize("name, options, match", [
    ("fgsm", dict(activation="silu"), "activation"),
    ("fgsm", dict(first_stride=2), "first_stride"),
    ("fgsm", dict(steps=10), "one step"),
    ("fgsm", dict(mask_ratio=1.0), "mask_ratio"),
    ("fgsm", dict(first_conv_norm="linf"), "first_conv_norm"),
    ("fat", dict(beta=6.0), "trades=True"),
    ("fat", dict(tau=1, tau_milestones=(2, 3)), "not both"),
    ("fat", dict(tau_milestones=(5, 2)), "non-decreasing"),
    ("trades", dict(beta=-1.0), "beta"),
    ("spat", dict(s=0.0), "s must be >"),
    ("iat", dict(steps=1.5), "steps"),
    ("thrm", dict(eps=float("nan")), "eps"),
])
def test_bad_options_raise_clear_errors(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_recipe(name, **options)


def test_fgsm_accepts_one_step():
    assert create_recipe("fgsm", steps=1).options()["alpha"] == pytest.approx(1.25 * 8 / 255)


# ---------------------------------------------------------------------------------------------
# training on digits


@pytest.fixture(scope="module")
def digits():
    return load_digits("train"), load_digits("test")


TRAIN_CASES = {
    "fat": ("fat", dict(steps=3)),
    "fat_trades": ("fat", dict(steps=3, trades=True)),
    "trades": ("trades", dict(steps=3)),
    "fgsm": ("fgsm", dict()),
    "fgsm_tricks": ("fgsm", dict(random_start=False, mask_ratio=0.4, first_conv_reg=0.01)),
    "iat": ("iat", dict(steps=3)),
    "spat": ("spat", dict(steps=3)),
    "thrm": ("thrm", dict(steps=3)),
    "jsigr": ("jsigr", dict()),
    "jsigr_perturbation_mask": ("jsigr", dict(mask="perturbation", saliency_steps=2)),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_recipe_trains_small_cnn_on_digits_above_chance(case, digits):
    name, options = TRAIN_CASES[case]
    (x, y), (xt, yt) = digits
    epochs, batch = 3, 64
    recipe = create_recipe(name, eps=0.1, **options)
    model = recipe.prepare(SmallCNN(1, 10, width=16, mean=MEAN, std=STD), 10)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    steps_per_epoch = math.ceil(len(y) / batch)
    step = 0
    for epoch in range(epochs):
        recipe.epoch_start(epoch, epochs)
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), batch):
            rows = order[i:i + batch]
            ctx = StepContext(epoch, epochs, step, steps_per_epoch, generator)
            out = recipe.batch_loss(model, x[rows], y[rows], ctx)
            assert out.loss.dim() == 0 and torch.isfinite(out.loss)
            assert model.training  # the attacks restore train mode
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            step += 1
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.5, f"{case}: test accuracy {acc:.3f}"


@pytest.mark.parametrize("name", MINE)
def test_batch_loss_is_reproducible_from_the_generator(name, digits):
    (x, y), _ = digits
    options = {} if name == "fgsm" else dict(steps=2)
    recipe = create_recipe(name, eps=0.1, **options)
    model = recipe.prepare(SmallCNN(1, 10, width=8, mean=MEAN, std=STD), 10)
    a = recipe.batch_loss(model, x[:32], y[:32], ctx_for(seed=5)).loss
    b = recipe.batch_loss(model, x[:32], y[:32], ctx_for(seed=5)).loss
    c = recipe.batch_loss(model, x[:32], y[:32], ctx_for(seed=6)).loss
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------
# FGSM and its tricks


class Recorder(nn.Module):
    """Records every input of its forward (the gradient point first, then the training batch)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def input_grad(model, point, y):
    point = point.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(point), y, reduction="sum"), point)
    return g


def test_fgsm_without_tricks_is_one_sign_step_from_x():
    torch.manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(6, 3, 8, 8)
    y = torch.randint(0, 10, (6,))
    model = Recorder(SmallCNN(3, 10, width=8))
    out = create_recipe("fgsm", eps=0.05, random_start=False).batch_loss(model, x, y, ctx_for())
    point, x_adv = model.inputs
    assert torch.equal(point, x)
    expected = (x + 0.05 * input_grad(model.inner, x, y).sign()).clamp(0, 1)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert out.extras["mask_ratio"] == 0.0
    assert torch.allclose(out.loss, F.cross_entropy(model.inner(x_adv), y))


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("ratio", [0.25, 0.6])
def test_fgsm_mask_zeroes_the_stated_fraction_of_pixels_of_the_gradient_input(ratio, random_start):
    torch.manual_seed(2)
    eps = 0.05
    x = 0.2 + 0.6 * torch.rand(6, 3, 8, 8)   # no zero pixel of its own
    y = torch.randint(0, 10, (6,))
    model = Recorder(SmallCNN(3, 10, width=8))
    recipe = create_recipe("fgsm", eps=eps, random_start=random_start, mask_ratio=ratio)
    out = recipe.batch_loss(model, x, y, ctx_for(seed=3))
    point, x_adv = model.inputs
    k = round(ratio * 64)
    zero = point == 0
    # whole pixels (all 3 channels) are masked, exactly k of the 64 positions of every image
    assert torch.equal(zero.all(dim=1), zero.any(dim=1))
    assert zero.all(dim=1).flatten(1).sum(1).tolist() == [k] * 6
    assert float(out.extras["mask_ratio"]) == pytest.approx(k / 64)
    # unmasked pixels are the start point: x itself, or x + U(-eps, eps)
    if random_start:
        assert ((point - x).abs()[~zero] <= eps + 1e-6).all() and not torch.equal(point[~zero], x[~zero])
    else:
        assert torch.equal(point[~zero], x[~zero])
    # the training batch is not masked: within eps of x, no masked zeros
    assert (x_adv > 0).all() and ((x_adv - x).abs() <= eps + 1e-6).all()
    if not random_start:  # the step is added to the clean image: x + eps * sign(g(masked point))
        expected = (x + eps * input_grad(model.inner, point, y).sign()).clamp(0, 1)
        assert torch.allclose(x_adv, expected, atol=1e-6)
    # a new mask each batch
    model.inputs.clear()
    recipe.batch_loss(model, x, y, ctx_for(seed=4))
    assert not torch.equal(model.inputs[0] == 0, zero)


def test_pixel_keep_mask_shapes_and_counts():
    g = torch.Generator().manual_seed(0)
    image = fgsm.pixel_keep_mask(torch.rand(5, 3, 4, 6), 0.5, g)
    assert image.shape == (5, 1, 4, 6) and image.flatten(1).sum(1).tolist() == [12.0] * 5
    flat = fgsm.pixel_keep_mask(torch.rand(5, 10), 0.3, g)
    assert flat.shape == (5, 10) and flat.sum(1).tolist() == [7.0] * 5
    assert fgsm.pixel_keep_mask(torch.rand(2, 1, 3, 3), 0.0, g).all()


class LateRegistered(nn.Module):
    """Registers a conv `late` before `early`, but the input goes through `early` first."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(4, 4, 3, padding=1)
        self.early = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.late(F.relu(self.early(x)))).flatten(1))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_fgsm_first_conv_regulariser_is_in_the_loss_and_its_gradient(norm, digits):
    (x, y), _ = digits
    x, y = x[:32], y[:32]
    lam = 0.5
    model = LateRegistered()
    plain = create_recipe("fgsm", eps=0.1)
    reg = create_recipe("fgsm", eps=0.1, first_conv_reg=lam, first_conv_norm=norm)
    reg.prepare(model, 10)
    a = plain.batch_loss(model, x, y, ctx_for(seed=7))
    b = reg.batch_loss(model, x, y, ctx_for(seed=7))
    w = model.early.weight.detach()
    term = w.norm() if norm == "l2" else w.abs().sum()
    assert torch.allclose(b.extras["first_conv_norm"], term)
    assert torch.allclose(b.extras["loss_adv"], a.loss)  # same x_adv: same seed
    assert torch.allclose(b.loss, a.loss + lam * term)
    assert "first_conv_norm" not in a.extras
    grads = []
    for out in (a, b):
        model.zero_grad()
        out.loss.backward()
        grads.append((model.early.weight.grad.clone(), model.late.weight.grad.clone()))
    d_term = w / w.norm() if norm == "l2" else w.sign()
    assert torch.allclose(grads[1][0], grads[0][0] + lam * d_term, atol=1e-6)
    assert torch.allclose(grads[1][1], grads[0][1])  # the other conv is not regularised


def test_fgsm_regulariser_needs_a_conv():
    with pytest.raises(ValueError, match="Conv2d"):
        create_recipe("fgsm", first_conv_reg=0.1).prepare(Tiny(), 3)


# ---------------------------------------------------------------------------------------------
# hand-computed losses on fixed tensors


def test_iat_loss_equals_hand_computed_value(monkeypatch):
    record = {}
    monkeypatch.setattr(iat, "PGD", fake_attack(X_ADV, record))
    draws = [(0.3, torch.tensor([2, 0, 3, 1])), (0.8, torch.tensor([1, 3, 0, 2]))]
    calls = []

    def fixed_draw(generator, n, alpha, seed=None):
        assert isinstance(seed, int)
        calls.append((n, alpha))
        return draws[len(calls) - 1]

    monkeypatch.setattr(iat, "draw_mixup", fixed_draw)
    model = Tiny()
    out = create_recipe("iat", eps=0.05, steps=3).batch_loss(
        model, X, Y, ctx_for(autocast_dtype=torch.bfloat16, channels_last=True))
    assert calls == [(4, 1.0), (4, 1.0)]
    assert torch.equal(record["x"], X)  # the attack runs on the clean batch
    assert (record["eps"], record["alpha"], record["steps"], record["random_start"], record["keep"]) == (
        0.05, 2 / 255, 3, True, "last")
    assert record["autocast"] is torch.bfloat16 and record["channels_last"] is True
    assert isinstance(record["seed"], int)

    def w(z, lam, perm):
        return lam * ce_plain(z, Y) + (1 - lam) * ce_plain(z, Y[perm])

    (l1, p1), (l2, p2) = draws
    with torch.no_grad():
        clean = w(model(l1 * X + (1 - l1) * X[p1]), l1, p1)
        adv = w(model(l2 * X_ADV + (1 - l2) * X_ADV[p2]), l2, p2)
    expected = 0.5 * clean + 0.5 * adv
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert (out.extras["lam_clean"], out.extras["lam_adv"]) == (0.3, 0.8)
    assert out.logits is None and out.adv_logits is None


def test_draw_mixup_is_uniform_lambda_and_a_permutation():
    g = torch.Generator().manual_seed(0)
    lams = []
    for _ in range(200):
        lam, perm = losses.draw_mixup(g, 7, 1.0)
        assert sorted(perm.tolist()) == list(range(7))
        lams.append(lam)
    assert 0 <= min(lams) and max(lams) <= 1 and abs(sum(lams) / len(lams) - 0.5) < 0.06
    a = losses.draw_mixup(torch.Generator().manual_seed(3), 7, 1.0)
    b = losses.draw_mixup(torch.Generator().manual_seed(3), 7, 1.0)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert losses.draw_mixup(g, 7, 0.0)[0] == 1.0
    # a given seed decides lambda alone; the generator then only draws the permutation
    state = g.get_state()
    c = losses.draw_mixup(g, 7, 1.0, seed=11)
    assert c[0] == losses.draw_mixup(torch.Generator().manual_seed(5), 7, 1.0, seed=11)[0]
    g.set_state(state)
    assert torch.equal(c[1], torch.randperm(7, generator=g))


def test_step_seeds_come_from_the_host_generator_when_given():
    device_side = torch.Generator().manual_seed(1)
    host = torch.Generator().manual_seed(2)
    before = device_side.get_state()
    ctx = StepContext(0, 1, 0, 1, device_side, host_generator=host)
    seeds = [ctx.seed() for _ in range(3)]
    assert torch.equal(device_side.get_state(), before)  # the batch's generator is untouched
    expected = torch.Generator().manual_seed(2)
    assert seeds == [int(torch.randint(2 ** 31 - 1, (1,), generator=expected)) for _ in range(3)]
    # without a host generator the seeds come from the batch's generator
    ctx = StepContext(0, 1, 0, 1, device_side)
    ctx.seed()
    assert not torch.equal(device_side.get_state(), before)


def test_spat_installs_a_cosine_head():
    model = Tiny()
    w = model.out.weight.detach().clone()
    recipe = create_recipe("spat")
    assert recipe.prepare(model, 3) is model
    assert isinstance(model.out, losses.CosineHead) and model.out.in_features == 5
    assert torch.equal(model.out.weight.detach(), w) and model.out.scale == 8.0
    assert not any(isinstance(m, nn.Linear) and m.out_features == 3 for m in model.modules())
    recipe.prepare(model, 3)  # idempotent
    assert isinstance(model.out, losses.CosineHead)
    with torch.no_grad():
        f = model.features(X)
        cos = (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
        assert torch.allclose(model(X), 8.0 * cos)
        assert cos.abs().max() <= 1
    with pytest.raises(ValueError, match="num_classes"):
        create_recipe("spat").prepare(Tiny(), 10)
    with pytest.raises(ValueError, match="prepare"):
        create_recipe("spat").batch_loss(Tiny(), X, Y, ctx_for())


def spat_hand(model, w, s, m, n, beta):
    def cos(x):
        f = model.features(x)
        return (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()

    z, za = cos(X), cos(X_ADV)
    onehot = torch.eye(3, dtype=torch.float64)[Y]
    z_tilde = onehot * (1 + m - z) * z + (1 - onehot) * (z + m) * z
    natural = ce_plain(s * z_tilde, Y)
    lp, lq = log_softmax_plain(s * z), log_softmax_plain(s * za)
    k = torch.exp(lp) * (lp - lq)
    robust = (k * (k + n)).sum(dim=1).mean()
    return natural + beta * robust, natural, robust


@pytest.mark.parametrize("s, m, n, beta", [(8.0, 0.2, 0.2, 6.0), (4.0, 0.35, 0.5, 2.0)])
def test_spat_loss_equals_hand_computed_value(monkeypatch, s, m, n, beta):
    record = {}
    monkeypatch.setattr(spat, "GaussianStartPGD", fake_attack(X_ADV, record))
    model = Tiny()
    w = model.out.weight.detach().clone()
    recipe = create_recipe("spat", eps=0.05, alpha=0.01, steps=4, s=s, m=m, n=n, beta=beta)
    recipe.prepare(model, 3)
    out = recipe.batch_loss(model, X, Y, ctx_for())
    with torch.no_grad():
        expected, natural, robust = spat_hand(model, w, s, m, n, beta)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-10)
    assert out.extras["loss_natural"].item() == pytest.approx(natural.item(), abs=1e-10)
    assert out.extras["loss_robust"].item() == pytest.approx(robust.item(), abs=1e-10)
    # the attack maximises the recipe's own robust term, row by row, from a 0.001 Gaussian start
    assert (record["eps"], record["alpha"], record["steps"], record["keep"]) == (0.05, 0.01, 4, "last")
    assert record.get("sigma", 0.001) == 0.001
    other = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.5], [-0.5, 0.5, 0.0], [2.0, 1.0, -1.0]],
                         dtype=torch.float64)
    with torch.no_grad():
        rows = record["loss"](other, Y, None)
        lp, lq = log_softmax_plain(model(X)), log_softmax_plain(other)
        k = torch.exp(lp) * (lp - lq)
    assert torch.allclose(rows, (k * (k + n)).sum(dim=1), atol=1e-12)


def test_thrm_loss_equals_hand_computed_value(monkeypatch):
    record = {}
    monkeypatch.setattr(thrm, "HypocriticalPGD", fake_attack(X_ADV, record))
    model = Tiny()
    out = create_recipe("thrm", eps=0.04, steps=5, beta=3.0).batch_loss(
        model, X, Y, ctx_for(autocast_dtype=torch.float16))
    with torch.no_grad():
        z, zh = model(X), model(X_ADV)
        expected = ce_plain(z, Y) + 3.0 * kl_plain(z, zh)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert (record["eps"], record["alpha"], record["steps"], record["keep"]) == (0.04, 0.01, 5, "last")
    assert record["autocast"] is torch.float16 and record["channels_last"] is False
    assert torch.allclose(out.logits, z)
    hyp_acc = (zh.argmax(1) == Y).double().mean()
    assert out.extras["hyp_acc"].item() == pytest.approx(hyp_acc.item())


def test_trades_loss_equals_hand_computed_value(monkeypatch):
    record = {}
    monkeypatch.setattr(trades, "GaussianStartPGD", fake_attack(X_ADV, record))
    model = Tiny()
    out = create_recipe("trades", eps=0.05, steps=2).batch_loss(model, X, Y, ctx_for())
    with torch.no_grad():
        z, za = model(X), model(X_ADV)
        expected = ce_plain(z, Y) + 6.0 * kl_plain(z, za)
        other = za + 0.5
        lp, lq = log_softmax_plain(z), log_softmax_plain(other)
        rows = (torch.exp(lp) * (lp - lq)).sum(1)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.allclose(record["loss"](other, Y, None), rows, atol=1e-12)
    assert (record["eps"], record["alpha"], record["steps"], record["keep"]) == (0.05, 0.007, 2, "last")


def test_gaussian_start_pgd_increases_the_kl_and_stays_in_the_ball(digits):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=8, mean=MEAN, std=STD).eval()
    with torch.no_grad():
        clean = model(x)
    objective = losses.kl_objective(clean)
    x_adv = losses.GaussianStartPGD(model, eps=0.1, alpha=0.03, steps=5, loss=objective, keep="last", seed=1)(x, y)
    assert ((x_adv - x).abs() <= 0.1 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        kl_adv = objective(model(x_adv), y, None)
        kl_start = objective(model((x + 0.001 * torch.randn_like(x)).clamp(0, 1)), y, None)
    assert kl_adv.mean() > 100 * kl_start.mean()


# ---------------------------------------------------------------------------------------------
# FAT


def test_fat_tau_schedule():
    r = create_recipe("fat")
    assert r.milestones(120) == (50, 90)
    assert [r.tau_at(e, 120) for e in (0, 49, 50, 89, 90, 119)] == [0, 0, 1, 1, 2, 2]
    assert r.milestones(12) == (5, 9)
    t = create_recipe("fat", trades=True)
    assert t.milestones(85) == (30, 50, 70)
    assert [t.tau_at(e, 85) for e in (29, 30, 50, 70, 84)] == [0, 1, 2, 3, 3]
    assert create_recipe("fat", tau_milestones=[2, 4]).milestones(100) == (2, 4)
    assert [create_recipe("fat", tau_milestones=[2, 4]).tau_at(e, 100) for e in range(5)] == [0, 0, 1, 1, 2]
    assert create_recipe("fat", tau=3).tau_at(0, 10) == 3


def test_fat_passes_tau_and_trains_on_ce_of_the_early_stopped_points(monkeypatch):
    record = {}
    monkeypatch.setattr(fat, "FATPGD", fake_attack(X_ADV, record))
    model = Tiny()
    out = create_recipe("fat", eps=0.05, alpha=0.01, steps=4).batch_loss(model, X, Y, ctx_for(epoch=5, epochs=12))
    assert (record["tau"], record["omega"], record["random_start"], record["steps"]) == (1, 0.001, True, 4)
    with torch.no_grad():
        assert out.loss.item() == pytest.approx(ce_plain(model(X_ADV), Y).item(), abs=1e-12)
    assert out.extras["tau"] == 1.0 and out.logits is None


def test_fat_trades_loss(monkeypatch):
    record = {}
    monkeypatch.setattr(fat, "GaussianStartFATPGD", fake_attack(X_ADV, record))
    model = Tiny()
    out = create_recipe("fat", trades=True, beta=2.0).batch_loss(model, X, Y, ctx_for(epoch=84, epochs=85))
    assert (record["tau"], record["omega"]) == (3, 0.0) and callable(record["loss"])
    with torch.no_grad():
        z, za = model(X), model(X_ADV)
        expected = ce_plain(z, Y) + 2.0 * kl_plain(z, za)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)


def test_fat_trades_attack_runs_early_stopped(digits):
    (x, y), _ = digits
    model = SmallCNN(1, 10, width=8, mean=MEAN, std=STD)
    objective = losses.kl_objective(model.eval()(x[:16]).detach())
    out = losses.GaussianStartFATPGD(model, loss=objective, eps=0.1, alpha=0.02, steps=3, tau=0, seed=0)(x[:16], y[:16])
    # an untrained model misclassifies most inputs at the start: with tau = 0 they stay at the
    # Gaussian start, within 0.001 * a few sigma of x
    wrong = model(x[:16]).argmax(1) != y[:16]
    assert wrong.any()
    assert ((out - x[:16]).abs().flatten(1).amax(1)[wrong] < 0.01).all()
