"""Test helpers shipped with the package: backends, dtypes, tolerance tables, input builders.

A *backend* is where an op's kernels run:
  cpu       the C++ CPU kernels (torch.ops.fastrobust on CPU tensors)
  cuda      the CUDA kernels on a GPU (torch.ops.fastrobust on CUDA tensors)
  cuda-emu  the same CUDA device code run on the CPU by the emulator
            (torch.ops.fastrobust_emu on CPU tensors; FR_EMULATE_CUDA=1 builds)
Test bodies take a backend and run unchanged on all three.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ._extension import HAS_EMU, HAS_EXT


@dataclass(frozen=True)
class Backend:
    name: str
    device: str
    namespace: str

    def op(self, name: str):
        return getattr(getattr(torch.ops, self.namespace), name)

    @property
    def emulated(self) -> bool:
        return self.namespace == "fastrobust_emu"


CPU = Backend("cpu", "cpu", "fastrobust")
CUDA = Backend("cuda", "cuda", "fastrobust")
CUDA_EMU = Backend("cuda-emu", "cpu", "fastrobust_emu")


def backends():
    """pytest params for every backend; unavailable ones are skipped with the reason."""
    import pytest

    no_ext = pytest.mark.skipif(not HAS_EXT, reason="compiled extension not built")
    return [
        pytest.param(CPU, id="cpu", marks=no_ext),
        pytest.param(CUDA, id="cuda", marks=[no_ext, pytest.mark.cuda]),
        pytest.param(
            CUDA_EMU,
            id="cuda-emu",
            marks=pytest.mark.skipif(not HAS_EMU, reason="built without FR_EMULATE_CUDA=1"),
        ),
    ]


def raises_value_check(backend: Backend, host_message: str, device_message: str):
    """pytest.raises for a bad value inside a tensor argument (a negative eps, a label out of
    range). The CPU backend reads values on the host (host_message); the CUDA device code
    asserts them in the kernel, which the emulator reports as "device-side assert triggered:
    <device_message>". On a real GPU such an assert ends the CUDA context, so the `cuda` backend
    is skipped here: tests/test_device_asserts.py checks it in a subprocess."""
    import pytest

    if backend.name == "cuda":
        pytest.skip("a device-side assert ends the CUDA context; checked in a subprocess instead")
    if backend.emulated:
        return pytest.raises(RuntimeError, match="device-side assert triggered: .*" + device_message)
    return pytest.raises(RuntimeError, match=host_message)


def devices():
    """pytest params "cpu" and "cuda" (the latter marked `cuda`, skipped without a GPU)."""
    import pytest

    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# (rtol, atol) of a kernel against a float64 oracle, per dtype; forward and backward.
FORWARD_TOL: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
BACKWARD_TOL: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (3e-2, 3e-2),
}
# Gradients that are sums over many elements (weights, biases) get the reduction tolerance.
REDUCTION_TOL: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def assert_close_to_oracle(actual, oracle, dtype, tol=FORWARD_TOL, lowp_torch=None, name="output"):
    """Checks `actual` (computed in `dtype`) against a float64 `oracle`.

    float32/float64: plain assert_close with `tol[dtype]`. float16/bfloat16: the kernel's
    max error must be at most 2x the max error of the same maths done by PyTorch in that
    dtype (`lowp_torch`), plus a small floor; without `lowp_torch`, the tolerance table.
    """
    actual64 = actual.detach().to(torch.float64).cpu()
    oracle64 = oracle.detach().to(torch.float64).cpu()
    if dtype in LOW_PRECISION and lowp_torch is not None:
        err = (actual64 - oracle64).abs().max().item() if actual64.numel() else 0.0
        ref_err = (lowp_torch.detach().to(torch.float64).cpu() - oracle64).abs().max().item() if actual64.numel() else 0.0
        floor = tol[dtype][1] * max(1.0, oracle64.abs().max().item() if oracle64.numel() else 1.0) * 0.1
        assert err <= 2 * ref_err + floor, (
            f"{name}: {dtype} kernel error {err:.3g} exceeds 2x PyTorch's {dtype} error "
            f"{ref_err:.3g} (+ floor {floor:.3g})"
        )
        return
    rtol, atol = tol[dtype]
    torch.testing.assert_close(actual64, oracle64, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def make_sparta_inputs(shape, k=3, dtype=torch.float32, device="cpu", requires_grad=False, seed=0,
                       param_scale=0.5):
    """Random (x, weight, bias) for sparta; weights non-zero so the gate matters."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = param_scale * torch.randn(c, 1, k, k, generator=g, dtype=torch.float64)
    bias = param_scale * torch.randn(c, generator=g, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (x, weight, bias))


def train_digits_cnn(x: torch.Tensor, y: torch.Tensor, width: int = 16, epochs: int = 6, seed: int = 0,
                     model: Optional[str] = None, lr: float = 1e-2):
    """A SmallCNN (or the registry model `model`, built for 8x8 inputs) trained with Adam (lr,
    batches of 128) on (x, y), frozen in eval mode: about 96 % test accuracy on the digits split
    after the default 6 epochs. Leaves torch's global RNG as it found it."""
    import torch.nn.functional as F

    from .models import SmallCNN, create

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if model is None:
            net = SmallCNN(x.shape[1], int(y.max()) + 1, width=width)
        else:
            net = create(model, in_channels=x.shape[1], num_classes=int(y.max()) + 1, image_size=tuple(x.shape[2:]))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for epoch in range(epochs):
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
            for i in range(0, len(y), 128):
                rows = order[i:i + 128]
                loss = F.cross_entropy(net(x[rows]), y[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of `fastrobust` main(argv) under pytest's capsys,
    argparse's SystemExit included."""
    from .cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_captured(argv):
    """(exit status, stdout, stderr) of `fastrobust` main(argv), its output captured here (in
    a spawned process, where pytest's capsys does not reach)."""
    import contextlib
    import io

    from .cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a test's process group)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo_group(rank: int, world_size: int, port: int, timeout_s: float = 120.0) -> None:
    """A spawned test rank joins a gloo group on 127.0.0.1:port with torchrun's environment
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set and one torch thread, so its
    numbers are those of a single process run with one thread."""
    import datetime
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
