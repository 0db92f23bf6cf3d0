"""Attacks on CUDA tensors: the same results as on the CPU, and CUDA-graph replay gives the
same results as the uncaptured loop (skipped without a GPU)."""
import pytest
import torch

from fastrobust import attacks
from fastrobust.attacks.graph import StepRunner
from fastrobust.models import SmallCNN

pytestmark = [pytest.mark.cuda,
              pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning")]

EPS = 0.1
ATTACKS = {
    "pgd": lambda m, **kw: attacks.PGD(m, eps=EPS, alpha=EPS / 4, steps=5, restarts=2, **kw),
    "pgd-l2-cw": lambda m, **kw: attacks.PGD(m, eps=0.5, alpha=0.1, steps=5, norm="l2", loss="cw", **kw),
    "pgd-batched-restarts": lambda m, **kw: attacks.PGD(m, eps=EPS, steps=4, restarts=3, restart_batch=1, **kw),
    "fat": lambda m, **kw: attacks.FATPGD(m, eps=EPS, alpha=EPS / 4, steps=5, tau=1, **kw),
    "alternating": lambda m, **kw: attacks.AlternatingPGD(m, eps=EPS, steps=9, schedule=("ce", "cw", "dlr"), **kw),
    "hypocritical": lambda m, **kw: attacks.HypocriticalPGD(m, eps=EPS, steps=5, keep="success", **kw),
    "apgd": lambda m, **kw: attacks.APGD(m, eps=EPS, steps=12, **kw),
    "apgd-t": lambda m, **kw: attacks.APGD(m, eps=EPS, steps=8, loss="dlr", targeted=True, n_target_classes=3, **kw),
}


def problem(device, n=64):
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SmallCNN(3, 10, width=8).eval()
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # correct at the start, so the attacks have work to do
    return model.to(device), x.to(device), y.to(device)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_cuda_matches_cpu(name):
    cpu = ATTACKS[name](problem("cpu")[0], seed=0).run(*problem("cpu")[1:])
    cuda = ATTACKS[name](problem("cuda")[0], seed=0).run(*problem("cuda")[1:])
    assert cuda.x_adv.is_cuda and cuda.success.is_cuda and cuda.x_adv.shape == cpu.x_adv.shape
    assert ((cuda.x_adv.cpu() - problem("cpu")[1]).abs().flatten(1).amax(1) <= 0.5 + 1e-6).all()
    # torch generators draw other numbers on another device: the success rates agree, not the points
    assert abs(cuda.success.float().mean().item() - cpu.success.float().mean().item()) <= 0.1


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graph_replay_matches_the_eager_loop(name, autocast, monkeypatch):
    captures = []
    capture = StepRunner._capture

    def counting_capture(self, key, body):
        captures.append(key)
        return capture(self, key, body)

    monkeypatch.setattr(StepRunner, "_capture", counting_capture)
    model, x, y = problem("cuda")
    eager = ATTACKS[name](model, seed=0, autocast=autocast).run(x, y)
    assert not captures
    graphed = ATTACKS[name](model, seed=0, autocast=autocast, cuda_graph=True).run(x, y)
    assert captures, "the step should have been captured"
    assert (graphed.forwards, graphed.backwards) == (eager.forwards, eager.backwards)
    assert torch.equal(graphed.success, eager.success)
    torch.testing.assert_close(graphed.x_adv, eager.x_adv, rtol=0, atol=1e-5)
    torch.testing.assert_close(graphed.loss, eager.loss, rtol=1e-4, atol=1e-4)


def test_cuda_graph_with_channels_last_and_per_sample_eps():
    model, x, y = problem("cuda")
    eps = torch.linspace(0.02, 0.2, len(y), device="cuda")
    kwargs = dict(eps=eps, alpha=eps / 4, steps=5, seed=0, channels_last=True)
    eager = attacks.PGD(model, **kwargs).run(x, y)
    graphed = attacks.PGD(model, cuda_graph=True, **kwargs).run(x, y)
    assert torch.equal(graphed.success, eager.success)
    torch.testing.assert_close(graphed.x_adv, eager.x_adv, rtol=0, atol=1e-5)
    assert ((graphed.x_adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all()


def test_no_parameter_gradients_on_cuda():
    model, x, y = problem("cuda")
    model.train()
    attacks.PGD(model, eps=EPS, steps=3, cuda_graph=True, seed=0)(x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
