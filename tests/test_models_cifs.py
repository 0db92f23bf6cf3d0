"""ResNet18CIFS (layout, outputs, label rules, wiring against the reference CIFS layer,
training through cifs_loss) and CIFSLogits under fastrobust.attacks.PGD."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastrobust.attacks import PGD
from fastrobust.models import CIFSLogits, ResNet18CIFS, cifs_joint_loss
from fastrobust.nn import CIFS, Normalize, cifs_loss
from fastrobust.reference.cifs import cifs_layer


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ResNet18CIFS(num_classes=7)


def batch(n=2, classes=7, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_layout_is_the_official_one(model):
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [len(layer) for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2, 2, 2, 2]
    assert [layer[0].conv2.out_channels for layer in (model.layer1, model.layer2, model.layer3, model.layer4)] == \
        [64, 128, 256, 512]
    mlp, linear = model.cifs
    assert isinstance(mlp, CIFS) and (mlp.probe, mlp.hidden, mlp.beta, mlp.channels) == ("mlp", 128, 5.0, 512)
    assert (linear.probe, linear.channels) == ("linear", 512)
    assert all((c.num_classes, c.temperature, c.scale) == (7, 1.0, 1.0) for c in model.cifs)


def test_outputs_and_label_rules(model):
    x, y = batch()
    model.train()
    with pytest.raises(ValueError, match="labels must be given in train mode"):
        model(x)
    logits, probes = model(x, y)
    assert logits.shape == (2, 7) and len(probes) == 2 and all(p.shape == (2, 7) for p in probes)
    model.eval()
    without = model(x)
    for ignored in (y, (y + 1) % 7):
        with_labels = model(x, ignored)
        torch.testing.assert_close(with_labels[0], without[0], rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_is_the_reference_composition(model, training):
    """The same network written out with the official CIFS module (reference.cifs_layer)."""
    x, y = batch()
    model.train(training)
    out = F.relu(model.bn1(model.conv1(x)))
    out = model.layer3(model.layer2(model.layer1(out)))
    want_probes = []
    for block, cifs in zip(model.layer4, model.cifs):
        out, p = cifs_layer(block(out), cifs.probe_module(), y, training)
        want_probes.append(p)
    want = model.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
    logits, probes = model(x, y)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    for p, q in zip(probes, want_probes):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_cifs_loss_trains_every_parameter(model):
    x, y = batch()
    model.train().zero_grad()
    logits, probes = model(x, y)
    cifs_loss(logits, probes, y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    model.zero_grad()


def test_input_normalization_and_bad_arguments():
    normalized = ResNet18CIFS(num_classes=3, in_channels=1, mean=[0.5], std=[0.25])
    assert isinstance(normalized.normalize, Normalize)
    assert normalized.eval()(torch.rand(2, 1, 16, 16))[0].shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        ResNet18CIFS(num_classes=1)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        ResNet18CIFS(in_channels=0)
    with pytest.raises(ValueError, match="mean and std must be given together"):
        ResNet18CIFS(mean=[0.5, 0.5, 0.5])


def test_cifs_logits_are_the_final_logits(model):
    x, _ = batch()
    model.eval()
    logits = CIFSLogits(model)(x)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, model(x)[0], rtol=0, atol=0)


def test_pgd_attacks_cifs_logits_in_eval_mode(model):
    """The attack runs the model in eval mode (no labels needed) and restores train mode."""
    x, y = batch()
    model.train()
    eps = 8 / 255
    result = PGD(CIFSLogits(model), eps=eps, alpha=2 / 255, steps=3, seed=0).run(x, y)
    assert model.training and all(m.training for m in model.modules())
    delta = result.x_adv - x
    assert 0 < delta.abs().max() <= eps + 1e-6 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    # success is judged on the final logits
    model.eval()
    assert torch.equal(result.success, model(result.x_adv)[0].argmax(1) != y)


def test_pgd_attacks_the_joint_loss(model):
    """The official attack objective: PGD on the network itself with cifs_joint_loss. The
    reported loss is the joint loss at x_adv, higher than at x, and success is judged on the
    final logits."""
    x, y = batch()
    eps = 8 / 255
    result = PGD(model, eps=eps, alpha=2 / 255, steps=3, seed=0, loss=cifs_joint_loss(beta=2.0)).run(x, y)
    model.eval()
    with torch.no_grad():
        final, probes = model(result.x_adv)
        clean_final, clean_probes = model(x)
    joint = cifs_loss(final, probes, y, beta=2.0, reduction="none")
    torch.testing.assert_close(result.loss, joint, rtol=1e-4, atol=1e-4)
    assert joint.sum() > cifs_loss(clean_final, clean_probes, y, beta=2.0, reduction="none").sum()
    assert torch.equal(result.success, final.argmax(1) != y)
    assert (result.x_adv - x).abs().max() <= eps + 1e-6


def test_cifs_logits_errors(model):
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        cifs_joint_loss(beta=-1.0)
    with pytest.raises(ValueError, match="targets: the CIFS joint loss is untargeted"):
        cifs_joint_loss()((torch.zeros(2, 10), [torch.zeros(2, 10)]), torch.zeros(2, dtype=torch.long),
                          torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        CIFSLogits(lambda x: x)
    with pytest.raises(ValueError, match=r"model must return \(logits, \[probe_logits, ...\]\)"):
        CIFSLogits(nn.Linear(4, 3))(torch.randn(2, 4))
