"""The presets of the TisODE and J-SIGR evaluations: FGSM, TisODE's official attack (against a
literal re-implementation of its coordinate-Adam loop), the transfer preset crafted on
surrogates, and the Gaussian-noise accuracy."""
import pytest
import torch
import torch.nn.functional as F

from fastrobust.eval import evaluate, make_attack
from fastrobust.eval.noise import check_sigmas
from fastrobust.models import LogitEnsemble, SmallCNN

pytestmark = pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")


def official_coordinate_adam(model, x, y, eps, lr, max_iter):
    """TisODE's ad_attack/attk/cw_black.py BlackBoxL2.run for one image at a time (white-box
    cw_grad, beta1 = beta2 = 0, all coordinates updated, L-inf box projection): returns the
    per-image success flags. Written from the official code, loop for loop."""
    max_iter = 2 if max_iter == 1 else max_iter
    success = []
    for i in range(x.shape[0]):
        img, target = x[i:i + 1], y[i:i + 1]
        flat = img.reshape(-1)
        up = torch.minimum(1 - flat, torch.full_like(flat, eps))
        down = torch.maximum(-flat, torch.full_like(flat, -eps))
        modifier = torch.zeros_like(img)
        mt = torch.zeros_like(flat)
        vt = torch.zeros_like(flat)
        epoch = torch.ones_like(flat)
        onehot = F.one_hot(target, 10).to(x.dtype)
        found = False
        for _ in range(max_iter):
            adv = (modifier + img).detach()
            with torch.no_grad():
                found |= bool(model(adv).argmax(1) != target)
            adv.requires_grad_(True)
            p = F.softmax(model(adv), dim=1)
            real = (onehot * p).sum(1)
            other = ((1.0 - onehot) * p - onehot * 10000.0).max(1)[0]
            loss = torch.sum(0.5 * torch.clamp(torch.log(real + 1e-30) - torch.log(other + 1e-30), min=0.0))
            grad = torch.autograd.grad(loss, adv)[0].reshape(-1)
            mt = 0.0 * mt + (1 - 0.0) * grad  # beta1 = 0
            vt = 0.0 * vt + (1 - 0.0) * grad * grad  # beta2 = 0
            corr = torch.sqrt(1 - torch.pow(torch.zeros_like(epoch), epoch)) / (1 - torch.pow(torch.zeros_like(epoch), epoch))
            m = modifier.reshape(-1) - lr * corr * mt / (torch.sqrt(vt) + 1e-8)
            modifier = torch.max(torch.min(m, up), down).reshape(img.shape)
            epoch = epoch + 1
        success.append(found)
    return torch.tensor(success)


@pytest.fixture(scope="module")
def model64(digits_model):
    """The digits model in float64 (a copy), so both loops see the same gradients."""
    import copy
    return copy.deepcopy(digits_model).double().eval()


# The paper's MNIST radii break every 8x8 digit; these keep both outcomes (lr = eps and eps/5
# as the official FGSM and PGD).
@pytest.mark.parametrize("preset,eps,lr,max_iter", [("tisode-fgsm", 0.05, 0.05, 1), ("tisode-fgsm", 0.1, 0.1, 1),
                                                    ("tisode-pgd", 0.1, 0.02, 10)])
def test_tisode_presets_equal_the_official_coordinate_adam(model64, digits_test_set, preset, eps, lr, max_iter):
    x, y = digits_test_set
    x, y = x[:96].double(), y[:96]
    ours = make_attack(preset, model64, eps).run(x, y)
    official = official_coordinate_adam(model64, x, y, eps, lr, max_iter)
    clean_wrong = model64(x).argmax(1) != y
    assert 5 < int(official.sum()) < 96  # a case that separates the two outcomes
    assert torch.equal(ours.success | clean_wrong, official)


def test_fgsm_preset_is_one_sign_step_of_eps(digits_model, digits_test_set):
    x, y = digits_test_set
    x, y = x[:64], y[:64]
    x_req = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(digits_model(x_req), y, reduction="sum"), x_req)[0]
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    result = make_attack("fgsm", digits_model, 0.1).run(x, y)
    with torch.no_grad():
        fooled = digits_model(expected).argmax(1) != y
    clean_wrong = digits_model(x).argmax(1) != y
    assert torch.equal(result.success, fooled | clean_wrong)
    assert torch.allclose(result.x_adv[fooled & ~clean_wrong], expected[fooled & ~clean_wrong], atol=1e-6)


def test_transfer_preset_crafts_on_the_surrogate_and_the_model_judges(digits_model, digits_test_set):
    x, y = digits_test_set
    x, y = x[:128], y[:128]
    torch.manual_seed(1)
    weak = SmallCNN(in_channels=1, num_classes=10).eval()  # untrained: a poor surrogate
    white = evaluate(digits_model, (x, y), attacks=["mifgsm"], eps=0.1)
    same = evaluate(digits_model, (x, y), attacks=["transfer"], eps=0.1, surrogate=digits_model)
    poor = evaluate(digits_model, (x, y), attacks=["transfer"], eps=0.1, surrogate=weak)
    both = evaluate(digits_model, (x, y), attacks=["transfer"], eps=0.1, surrogate=[digits_model, weak])
    # crafted on the model itself, the transfer preset is the white-box MI-FGSM
    assert same.robust_accuracy == pytest.approx(white.robust_accuracy)
    # crafted on an untrained net it is weaker than the white-box attack
    assert poor.robust_accuracy > white.robust_accuracy + 0.1
    assert poor.attacks[0].forwards >= poor.attacks[0].points_attacked  # the model's judging forward is counted
    assert both.metadata["surrogate"] == "LogitEnsemble"
    with pytest.raises(ValueError, match="surrogate"):
        evaluate(digits_model, (x, y), attacks=["transfer"], eps=0.1)
    with pytest.raises(TypeError, match="surrogate"):
        evaluate(digits_model, (x, y), attacks=["transfer"], eps=0.1, surrogate=[])


def test_transfer_from_a_standard_surrogate_is_weaker_than_white_box(digits_model, digits_test_set):
    """The issue's check: on a standard model, MI-FGSM transferred from another standard-trained
    net (another width and seed) leaves more points robust than the white-box attack."""
    from fastrobust.data import load_digits
    from fastrobust.testing import train_digits_cnn

    x, y = digits_test_set
    surrogate = train_digits_cnn(*load_digits("train"), width=32, epochs=10, seed=7)
    white = evaluate(digits_model, (x, y), attacks=["mifgsm"], eps=0.1)
    transfer = evaluate(digits_model, (x, y), attacks=["transfer"], eps=0.1, surrogate=surrogate)
    assert transfer.clean_accuracy == white.clean_accuracy
    assert white.robust_accuracy < transfer.robust_accuracy < transfer.clean_accuracy


def test_ensemble_surrogate_attacks_the_averaged_logits(digits_model, digits_test_set):
    x, y = digits_test_set
    x, y = x[:64], y[:64]
    ens = LogitEnsemble([digits_model, digits_model])
    a = make_attack("mifgsm", ens, 0.1, seed=0)(x, y)
    b = make_attack("mifgsm", digits_model, 0.1, seed=0)(x, y)
    assert torch.allclose(a, b, atol=1e-6)


def test_noise_accuracy_counts_noisy_predictions(digits_model, digits_test_set):
    x, y = digits_test_set
    x, y = x[:200], y[:200]
    report = evaluate(digits_model, (x, y), attacks=[], eps=0.1, noise=[100 / 255, 1.0], seed=3)
    r100, r1 = report.noise
    g = torch.Generator()
    g.manual_seed(3 * 1000003 + 0)  # the documented stream of the first sigma
    noisy = (x + (100 / 255) * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        correct = digits_model(noisy).argmax(1) == y
        clean = digits_model(x).argmax(1) == y
    assert r100.accuracy == pytest.approx(correct.float().mean().item())
    assert r100.accuracy_of_clean_correct == pytest.approx((correct & clean).sum().item() / clean.sum().item())
    assert r1.accuracy < r100.accuracy  # sigma 1 destroys the digits
    assert report.robust_accuracy == report.clean_accuracy  # noise is not part of the robust accuracy
    again = evaluate(digits_model, (x, y), attacks=[], eps=0.1, noise=[100 / 255], seed=3)
    assert again.noise[0].accuracy == r100.accuracy
    assert report.to_dict()["noise"][0]["sigma"] == pytest.approx(100 / 255)
    assert "Gaussian noise" in report.summary()


@pytest.mark.parametrize("bad", [[0.0], [-0.1], [float("nan")], ["0.1"], 0.1, [True]])
def test_noise_rejects_bad_sigmas(bad):
    with pytest.raises(ValueError, match="noise"):
        check_sigmas(bad)
