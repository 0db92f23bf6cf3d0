"""Smoke run of every CUDA op of fastrobust, for compute-sanitizer (see gpu_check.sh).

Runs each op (forward and backward where it has one) on small, odd shapes (a few blocks,
partial tiles, H or W of 1, rows longer than a block), for every dtype, every supported
kernel size and contiguous, channels_last and strided inputs, and compares outputs and gradients with the pure-PyTorch reference
computed in float64 on the CPU (so that, under the sanitizer, the GPU runs little besides
our kernels). Exits 0 when everything matches, 1 on a mismatch or an error, 2 when the
device asked for is not there.

    python benchmarks/gpu_smoke.py                 # CUDA (the default)
    python benchmarks/gpu_smoke.py --device emu    # the same CUDA kernels, CPU emulator
    python benchmarks/gpu_smoke.py --device cpu    # the CPU kernels
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script

import torch  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# rtol = atol, against a float64 oracle computed from the same (rounded) inputs
TOLERANCES = {torch.float64: 1e-7, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
EXIT_OK, EXIT_MISMATCH, EXIT_NO_DEVICE = 0, 1, 2

LAYOUTS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "contiguous": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    # same values, transposed strides: the kernels must not assume a dense NCHW layout
    "strided": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
}


def max_error_text(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float) -> Optional[str]:
    """None when actual matches expected within tol (rtol = atol), else what went wrong."""
    if tuple(actual.shape) != tuple(expected.shape):
        return f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    if expected.numel() == 0:
        return None
    err = (actual.detach().cpu().double() - expected.detach().double()).abs()
    allowed = tol + tol * expected.detach().double().abs()
    if bool((err <= allowed).all()):
        return None
    return f"{name}: max abs err {err.max().item():.3g}, {(err / allowed).max().item():.3g}x tolerance {tol:g}"


def forward_backward(fn: Callable, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor,
                     layout: Callable[[torch.Tensor], torch.Tensor]):
    """Output and input gradients of fn(layout(x), *rest); the leaves stay contiguous."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(layout(leaves[0]), *leaves[1:])
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out, grads


# ----------------------------------------------------------------------------- sparta

SPARTA_KERNEL_SIZES = (1, 3, 5, 7)
SPARTA_SHAPES = ((1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 17, 13), (2, 7, 37, 41))
SPARTA_LAYOUT_SHAPE = (2, 7, 37, 41)  # the shape also run channels_last and strided


def sparta_configs():
    for dtype, k in itertools.product(DTYPES, SPARTA_KERNEL_SIZES):
        for shape in SPARTA_SHAPES:
            yield dtype, k, shape, "contiguous"
        for layout in ("channels_last", "strided"):
            yield dtype, k, SPARTA_LAYOUT_SHAPE, layout


def smoke_sparta(namespace, device: str) -> List[str]:
    from fastrobust.reference import sparta as reference

    failures = []
    for seed, (dtype, k, shape, layout) in enumerate(sparta_configs()):
        gen = torch.Generator().manual_seed(seed)
        c = shape[1]
        # Rounded to dtype first, so the oracle sees exactly what the kernel sees.
        cpu = [torch.randn(shape, generator=gen).to(dtype),
               (0.5 * torch.randn(c, 1, k, k, generator=gen)).to(dtype),
               (0.5 * torch.randn(c, generator=gen)).to(dtype)]
        grad_out = torch.randn(shape, generator=gen).to(dtype)
        where = f"sparta {str(dtype).replace('torch.', '')} k={k} shape={shape} {layout}"
        try:
            out, grads = forward_backward(namespace.sparta, [t.to(device) for t in cpu],
                                          grad_out.to(device), LAYOUTS[layout])
            if device.startswith("cuda"):
                torch.cuda.synchronize()  # a kernel fault surfaces here, attributed to this case
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        ref_out, ref_grads = forward_backward(reference, [t.double() for t in cpu], grad_out.double(),
                                              LAYOUTS["contiguous"])
        tol = TOLERANCES[dtype]
        checks = [("out", out, ref_out)] + list(zip(("grad_x", "grad_weight", "grad_bias"), grads, ref_grads))
        for name, actual, expected in checks:
            problem = max_error_text(name, actual, expected, tol)
            if problem:
                failures.append(f"{where}: {problem}")
    return failures


# ----------------------------------------------------------------------------- pgd

# rows x row size: one element, CIFAR-sized rows, rows longer than a block's threads x 4
PGD_SHAPES = ((1, 1), (3, 3 * 32 * 32), (2, 5000), (5, 77))


def pgd_configs():
    for dtype, norm, shape in itertools.product(DTYPES, ("linf", "l2"), PGD_SHAPES):
        for layout in ("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",):
            yield dtype, norm, shape, layout
    for dtype, norm in itertools.product(DTYPES, ("linf", "l2")):
        yield dtype, norm, (2, 3, 9, 11), "channels_last"


def smoke_pgd(namespace, device: str) -> List[str]:
    """pgd_step_ (with active mask, noise, descent), apgd_step_, pgd_update_best_ and
    pgd_random_init_ against fastrobust.reference.pgd_step run on the CPU."""
    from fastrobust.reference import pgd_step as ref

    failures = []
    for seed, (dtype, norm, shape, layout) in enumerate(pgd_configs()):
        gen = torch.Generator().manual_seed(seed)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        n = shape[0]
        x0 = torch.rand(shape, generator=gen).to(dtype)
        x = (x0.float() + 0.05 * torch.randn(shape, generator=gen)).clamp(0, 1).to(dtype)
        grad = torch.randn(shape, generator=gen).to(dtype)
        noise = (1e-3 * torch.randn(shape, generator=gen)).to(dtype)
        eps = (0.05 + 0.1 * torch.rand(n, generator=gen)).to(acc)
        alpha = eps / 4
        active = torch.arange(n) % 2 == 0
        loss = torch.randn(n, generator=gen).to(dtype)
        best_loss = torch.randn(n, generator=gen).to(acc)
        success = torch.rand(n, generator=gen) < 0.5
        is_adv = torch.rand(n, generator=gen) < 0.5
        lay = LAYOUTS[layout]
        where = f"pgd {str(dtype).replace('torch.', '')} {norm} shape={shape} {layout}"
        dev = lambda t: lay(t).to(device) if t.dim() == 4 else t.to(device)
        tol = TOLERANCES[dtype]
        try:
            got = dev(x).clone()
            namespace.pgd_step_(got, dev(x0), dev(grad), eps.to(device), alpha.to(device), active.to(device),
                                dev(noise), norm, 0.0, 1.0, True)
            got_x, got_prev = dev(x).clone(), dev(x0).clone()
            namespace.apgd_step_(got_x, got_prev, dev(x0), dev(grad), (2 * eps).to(device), eps.to(device), 0.75,
                                 norm, 0.0, 1.0)
            got_best = [dev(x0).clone(), best_loss.to(device, copy=True), success.to(device, copy=True)]
            namespace.pgd_update_best_(*got_best, dev(x), loss.to(device), is_adv.to(device), "first_success")
            start = torch.empty_like(dev(x0))
            namespace.pgd_random_init_(start, dev(x0), eps.to(device), norm, 0.0, 1.0, seed, 3)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        want = ref.pgd_step_(x.clone(), x0, grad, eps, alpha, active, noise, norm, 0.0, 1.0, True)
        want_x, _ = ref.apgd_step_(x.clone(), x0.clone(), x0, grad, 2 * eps, eps, 0.75, norm, 0.0, 1.0)
        want_best = ref.pgd_update_best_(x0.clone(), best_loss.clone(), success.clone(), x, loss, is_adv,
                                         "first_success")
        checks = [("pgd_step_", got, want), ("apgd_step_", got_x, want_x), ("apgd x_prev", got_prev, x)]
        checks += list(zip(("best_x", "best_loss", "success"), got_best, want_best))
        for name, actual, expected in checks:
            problem = max_error_text(name, actual.double(), expected.double(), tol)
            if problem:
                failures.append(f"{where}: {problem}")
        d = (start.cpu().double() - x0.double()).reshape(n, -1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        if not bool((size <= eps.double() * (1 + tol) + tol).all()) or start.min() < 0 or start.max() > 1:
            failures.append(f"{where}: pgd_random_init_ left the eps-ball or the box")
    return failures


# ----------------------------------------------------------------------------- margin_loss

MARGIN_SHAPES = ((1, 4), (7, 10), (5, 33), (3, 1000), (130, 10))


def smoke_margin_loss(namespace, device: str) -> List[str]:
    from fastrobust.reference.margin_loss import margin_loss as reference

    failures = []
    configs = itertools.product(DTYPES, MARGIN_SHAPES, (("cw", False), ("cw", True), ("dlr", False), ("dlr", True)))
    for seed, (dtype, shape, (kind, targeted)) in enumerate(configs):
        gen = torch.Generator().manual_seed(seed)
        n, classes = shape
        # distinct logits in every dtype (2^(r/64): neighbours 1.1% apart), so that every max
        # and every sort has one answer
        ranks = torch.stack([torch.randperm(classes, generator=gen) for _ in range(n)])
        logits = torch.exp2(ranks.double() / 64).to(dtype)
        labels = torch.randint(0, classes, (n,), generator=gen)
        targets = (labels + torch.randint(1, classes, (n,), generator=gen)) % classes if targeted else None
        grad_out = torch.randn(n, generator=gen).to(dtype)
        where = f"margin_loss {str(dtype).replace('torch.', '')} {kind}{' targeted' if targeted else ''} shape={shape}"
        fn = lambda op, t: (lambda z: op(z, labels.to(t.device), None if targets is None else targets.to(t.device),
                                         kind, float("inf")))
        try:
            out, grads = forward_backward(fn(namespace.margin_loss, logits.to(device)), [logits.to(device)],
                                          grad_out.to(device), LAYOUTS["contiguous"])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        ref_out, ref_grads = forward_backward(fn(reference, logits), [logits.double()], grad_out.double(),
                                              LAYOUTS["contiguous"])
        for name, actual, expected in (("loss", out, ref_out), ("grad", grads[0], ref_grads[0])):
            problem = max_error_text(name, actual, expected, TOLERANCES[dtype])
            if problem:
                failures.append(f"{where}: {problem}")
    return failures


# ----------------------------------------------------------------------------- cifs_reweight

# (B, C, H, W): one element, layer4 (chunks of 256 channels), 2048 channels of 7x7 (a chunk
# of 83 channels, a channel wider than a warp), C = 1
CIFS_SHAPES = ((1, 1, 1, 1), (3, 512, 4, 4), (2, 2048, 7, 7), (4, 1, 3, 5))


def smoke_cifs_reweight(namespace, device: str) -> List[str]:
    from fastrobust.reference.cifs import cifs_reweight as reference

    failures = []
    configs = list(itertools.product(DTYPES, CIFS_SHAPES, ("contiguous",)))
    configs += [(dtype, (2, 64, 5, 3), layout) for dtype in DTYPES for layout in ("channels_last", "strided")]
    for seed, (dtype, shape, layout) in enumerate(configs):
        gen = torch.Generator().manual_seed(seed)
        cpu = [torch.randn(shape, generator=gen).to(dtype), (3 * torch.randn(shape[:2], generator=gen)).to(dtype)]
        grad_out = torch.randn(shape, generator=gen).to(dtype)
        where = f"cifs_reweight {str(dtype).replace('torch.', '')} shape={shape} {layout}"
        op = lambda f, r: namespace.cifs_reweight(f, r, 1.0, 2.0)
        try:
            out, grads = forward_backward(op, [t.to(device) for t in cpu], grad_out.to(device), LAYOUTS[layout])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        ref_out, ref_grads = forward_backward(lambda f, r: reference(f, r, 1.0, 2.0), [t.double() for t in cpu],
                                              grad_out.double(), LAYOUTS["contiguous"])
        # the relevance gradient sums C x H x W products: a looser tolerance in 16-bit types
        tol = TOLERANCES[dtype]
        checks = (("out", out, ref_out, tol), ("grad_feat", grads[0], ref_grads[0], tol),
                  ("grad_relevance", grads[1], ref_grads[1], 3 * tol))
        for name, actual, expected, t in checks:
            problem = max_error_text(name, actual, expected, t)
            if problem:
                failures.append(f"{where}: {problem}")
    return failures


# ----------------------------------------------------------------------------- nlm_gaussian

# (B, d, C, H, W): N = H * W mostly not a multiple of the 32-position tile, d != C (d < C as in
# the embedded layer, d > C too), C above the 64 output columns of a block, H of 1, one position
NLM_SHAPES = ((1, 1, 1, 1, 1), (2, 3, 5, 7, 5), (3, 16, 40, 9, 11), (1, 64, 24, 13, 17), (2, 8, 130, 1, 37),
              (1, 128, 256, 10, 10))
NLM_LAYOUT_SHAPE = (2, 8, 12, 9, 7)  # the shape also run channels_last and strided
LOW_PRECISION = (torch.float16, torch.bfloat16)


def like_eager_text(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float,
                    eager: Optional[torch.Tensor]) -> Optional[str]:
    """max_error_text, except that in float16/bfloat16 a max error at most 2x that of the same
    maths done by PyTorch in that dtype (`eager`) also passes (design section 5): the
    gradients of nlm_gaussian are sums over N positions, beyond an elementwise tolerance."""
    problem = max_error_text(name, actual, expected, tol)
    if problem is None or eager is None or tuple(actual.shape) != tuple(expected.shape):
        return problem
    err = (actual.detach().cpu().double() - expected.double()).abs().max().item()
    eager_err = (eager.detach().double() - expected.double()).abs().max().item()
    if err <= 2 * eager_err:
        return None
    return f"{problem}; also more than 2x PyTorch's {str(actual.dtype).replace('torch.', '')} error {eager_err:.3g}"


def nlm_configs():
    for dtype in DTYPES:
        for shape in NLM_SHAPES:
            yield dtype, shape, "contiguous"
        for layout in ("channels_last", "strided"):
            yield dtype, NLM_LAYOUT_SHAPE, layout


def reference_nlm(theta, phi, g, grad_y, scale):
    """(y, lse, (grad theta, grad phi, grad g)) of the materialised reference, by autograd."""
    from fastrobust.reference import nlm as reference

    leaves = [t.detach().clone().requires_grad_(True) for t in (theta, phi, g)]
    y = reference.nlm_gaussian(*leaves, scale)
    grads = torch.autograd.grad(y, leaves, grad_y)
    b, d = theta.shape[:2]
    logits = reference.nlm_affinity_logits(theta.reshape(b, d, -1), phi.reshape(b, d, -1), scale)
    return y.detach(), torch.logsumexp(logits, dim=-1), grads


def smoke_nlm_gaussian(namespace, device: str) -> List[str]:
    """The ops nlm_gaussian (y and the saved log-sum-exp) and _nlm_gaussian_backward, called
    directly, against the materialised reference in float64 on the CPU."""
    failures = []
    for seed, (dtype, shape, layout) in enumerate(nlm_configs()):
        gen = torch.Generator().manual_seed(seed)
        b, d, c, h, w = shape
        scale = 1.0 / d ** 0.5
        # theta, phi of std sqrt(2): logits of std about 2, a softmax far from uniform
        cpu = [(2 ** 0.5 * torch.randn(b, d, h, w, generator=gen)).to(dtype),
               (2 ** 0.5 * torch.randn(b, d, h, w, generator=gen)).to(dtype),
               torch.randn(b, c, h, w, generator=gen).to(dtype)]
        grad_y = torch.randn(b, c, h, w, generator=gen).to(dtype)
        where = f"nlm_gaussian {str(dtype).replace('torch.', '')} shape={shape} {layout}"
        lay = LAYOUTS[layout]
        try:
            theta, phi, g = (lay(t.to(device)) for t in cpu)
            y, lse = namespace.nlm_gaussian(theta, phi, g, scale)
            grads = namespace._nlm_gaussian_backward(lay(grad_y.to(device)), theta, phi, g, y, lse, scale)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        want_y, want_lse, want_grads = reference_nlm(*(t.double() for t in cpu), grad_y.double(), scale)
        eager_y, eager_grads = None, (None, None, None)
        if dtype in LOW_PRECISION:
            eager_y, _, eager_grads = reference_nlm(*cpu, grad_y, scale)
        tol = TOLERANCES[dtype]
        checks = [("y", y, want_y, eager_y)]
        checks += list(zip(("grad_theta", "grad_phi", "grad_g"), grads, want_grads, eager_grads))
        for name, actual, expected, eager in checks:
            problem = like_eager_text(name, actual, expected, tol, eager)
            if problem:
                failures.append(f"{where}: {problem}")
        # the row statistics accumulate in float32 (float64 for float64 inputs); the logits they
        # come from are exact products of the inputs on CUDA, but bfloat16-rounded on the CPU,
        # whose kernel runs bfloat16 GEMMs for bfloat16 inputs
        lse_tol = TOLERANCES[dtype if dtype == torch.bfloat16 else (torch.float64 if dtype == torch.float64
                                                                    else torch.float32)]
        problem = max_error_text("lse", lse, want_lse, lse_tol)
        if problem:
            failures.append(f"{where}: {problem}")
    return failures


# ----------------------------------------------------------------------------- median3x3

# (B, C, H, W): one pixel, H or W of 1 (the replicate rule), 2 x 2 (all border), odd sizes
# over several blocks
MEDIAN_SHAPES = ((1, 1, 1, 1), (2, 3, 1, 6), (2, 3, 6, 1), (1, 2, 2, 2), (2, 5, 17, 13), (3, 7, 37, 41))
MEDIAN_LAYOUT_SHAPE = (2, 5, 17, 13)


def smoke_median3x3(namespace, device: str) -> List[str]:
    """The ops median3x3 (y and the uint8 window position) and _median3x3_backward, called
    directly, against fastrobust.reference.median in float64 on the CPU: y and the position
    exactly (a selection does no arithmetic; ties follow the same rule), the gradient within
    the dtype's tolerance."""
    from fastrobust.reference.median import median3x3_with_arg

    failures = []
    configs = [(dtype, shape, "contiguous") for dtype in DTYPES for shape in MEDIAN_SHAPES]
    configs += [(dtype, MEDIAN_LAYOUT_SHAPE, layout) for dtype in DTYPES for layout in ("channels_last", "strided")]
    for seed, (dtype, shape, layout) in enumerate(configs):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=gen).to(dtype)
        grad_y = torch.randn(shape, generator=gen).to(dtype)
        where = f"median3x3 {str(dtype).replace('torch.', '')} shape={shape} {layout}"
        try:
            y, arg = namespace.median3x3(LAYOUTS[layout](x.to(device)))
            grad = namespace._median3x3_backward(grad_y.to(device), arg)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        leaf = x.double().requires_grad_(True)
        want_y, want_arg = median3x3_with_arg(leaf)
        (want_grad,) = torch.autograd.grad(want_y, leaf, grad_y.double())
        if arg.dtype != torch.uint8 or tuple(arg.shape) != shape:
            failures.append(f"{where}: arg must be uint8 of shape {shape}, got {arg.dtype} {tuple(arg.shape)}")
        elif not torch.equal(arg.cpu(), want_arg):
            failures.append(f"{where}: arg differs from the reference's window position at "
                            f"{int((arg.cpu() != want_arg).sum())} of {arg.numel()} pixels")
        if y.dtype != dtype or tuple(y.shape) != shape or not torch.equal(y.cpu().double(), want_y.detach()):
            failures.append(f"{where}: y is not the reference's median exactly")
        problem = max_error_text("grad_x", grad, want_grad, TOLERANCES[dtype])
        if problem:
            failures.append(f"{where}: {problem}")
    return failures


# op name -> smoke function(op namespace, device) -> failures. One entry per CUDA op.
SMOKES = {
    "sparta": smoke_sparta,
    "pgd": smoke_pgd,
    "margin_loss": smoke_margin_loss,
    "cifs_reweight": smoke_cifs_reweight,
    "nlm_gaussian": smoke_nlm_gaussian,
    "median3x3": smoke_median3x3,
}


# ----------------------------------------------------------------------------- main


def resolve(device: str):
    """(op namespace, torch device) for --device, or exits with EXIT_NO_DEVICE saying why."""
    try:
        import fastrobust
    except Exception as exc:
        sys.exit(_no_device(f"cannot import fastrobust: {type(exc).__name__}: {exc}"))
    if not fastrobust.HAS_EXT:
        sys.exit(_no_device(f"fastrobust._C is not built: {fastrobust.EXT_ERROR}"))
    if device == "cuda":
        if not torch.cuda.is_available():
            sys.exit(_no_device("no CUDA GPU is visible to torch; this smoke test needs one "
                                "(or run it with --device emu to use the CPU emulator)"))
        if not fastrobust.WITH_CUDA:
            sys.exit(_no_device("fastrobust was built without CUDA kernels (rebuild with FORCE_CUDA=1)"))
        return torch.ops.fastrobust, "cuda"
    if device == "emu":
        if not fastrobust.HAS_EMU:
            sys.exit(_no_device("fastrobust was built without the emulator (FR_EMULATE_CUDA=1)"))
        return torch.ops.fastrobust_emu, "cpu"
    return torch.ops.fastrobust, "cpu"


def _no_device(why: str) -> int:
    print(f"gpu_smoke: {why}", file=sys.stderr)
    return EXIT_NO_DEVICE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "emu", "cpu"], default="cuda",
                   help="cuda: the CUDA kernels (default); emu: the same kernels through the CPU "
                        "emulator; cpu: the CPU kernels")
    p.add_argument("--op", choices=sorted(SMOKES), action="append", help="only these ops (default: all)")
    args = p.parse_args(argv)
    namespace, device = resolve(args.device)
    total_failures = 0
    for name in args.op or sorted(SMOKES):
        failures = SMOKES[name](namespace, device)
        total_failures += len(failures)
        for line in failures:
            print(f"MISMATCH {line}")
        print(f"{name}: {'ok' if not failures else f'{len(failures)} failures'} ({args.device})")
    return EXIT_OK if total_failures == 0 else EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
