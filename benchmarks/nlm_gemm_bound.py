"""How fast can a kernel that never stores the (B, N, N) affinity be, next to the materialised
reference, on this machine? A measured bound for softmax NLM forward + backward.

Such a kernel (ours, FlashAttention's) recomputes the logits S = theta^T phi in the backward,
so it runs seven GEMMs where the materialised reference runs six: S and Y = P g^T forward;
S again, dP = dY^T g, dg = P^T dY, dtheta = dS phi and dphi = dS^T theta backward. Even with
every GEMM at the efficiency of one full-size batched GEMM and every row pass (softmax, its
gradient) free, it takes at least t_gemms, the measured time of those seven GEMMs at the
case's shape, so t_reference / t_fused cannot exceed

    bound = t_reference / t_gemms.

Where the bound is below 1 the shape cannot reach the reference with this algorithm on this
machine; where the measured ratio falls short of the bound, the row passes and the blocking
cost the difference. The script times, interleaved: the reference
(fastrobust.reference.nlm.nlm_gaussian under autograd), our op (fastrobust.ops.nlm_gaussian)
and the seven GEMMs, at the NLM suite's CPU shapes, fp32 and bf16:

    python -m benchmarks.nlm_gemm_bound [--rounds R] [--min-run-time S] [--out benchmarks/results]

Timing is the suites' (harness.time_steps_interleaved): rounds of blocked autoranges,
interleaved, the median over every block.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional

import torch

from fastrobust.bench import harness, results
from fastrobust.bench.nlm import CPU_BATCH, GAUSSIAN_SHAPES

DTYPES = (torch.float32, torch.bfloat16)


def fwd_bwd(fn: Callable, theta, phi, g, grad) -> Callable[[], None]:
    def step():
        leaves = [t.detach().requires_grad_(True) for t in (theta, phi, g)]
        torch.autograd.grad(fn(*leaves), leaves, grad)

    return step


def measure(b: int, c: int, hw: int, dtype: torch.dtype, rounds: int, min_run_time: float) -> dict:
    from fastrobust.ops import nlm_gaussian
    from fastrobust.reference.nlm import nlm_gaussian as reference

    gen = torch.Generator().manual_seed(harness.SEED)
    d, n = c // 2, hw * hw
    theta, phi = (torch.randn(b, d, hw, hw, generator=gen).to(dtype) for _ in range(2))
    g, grad = (torch.randn(b, c, hw, hw, generator=gen).to(dtype) for _ in range(2))
    q, k = theta.reshape(b, d, n).transpose(1, 2), phi.reshape(b, d, n)  # (B, N, d), (B, d, N)
    v, dy = g.reshape(b, c, n), grad.reshape(b, c, n)  # (B, C, N)
    # (B, N, N) stand-in for P and dS: any normal values do (a softmax of random logits would
    # be mostly denormal floats, which slow the CPU's GEMM many times over)
    p = torch.rand(b, n, n, generator=gen).to(dtype)

    def gemms():
        torch.bmm(q, k)  # S
        torch.bmm(p, v.transpose(1, 2))  # Y^T = P g^T
        torch.bmm(q, k)  # S again, in the backward
        torch.bmm(dy.transpose(1, 2), v)  # dP = dY^T g
        torch.bmm(p.transpose(1, 2), dy.transpose(1, 2))  # dg^T = P^T dY^T
        torch.bmm(p, k.transpose(1, 2))  # dtheta^T = dS phi^T
        torch.bmm(p.transpose(1, 2), q)  # dphi^T = dS^T theta^T

    timings = harness.time_steps_interleaved({
        "reference": fwd_bwd(reference, theta, phi, g, grad),
        "fused": fwd_bwd(nlm_gaussian, theta, phi, g, grad),
        "gemms": gemms,
    }, min_run_time, rounds, label="nlm_gemm_bound", sub_label=f"{harness.dtype_name(dtype)} B{b} C{c} {hw}x{hw}")
    failed = {name: r["error"] for name, r in timings.items() if "error" in r}
    if failed:
        raise RuntimeError(f"nlm_gemm_bound: {failed}")
    t = {name: r["median_s"] for name, r in timings.items()}
    return {"shape": [b, c, hw, hw], "d": d, "n": n, "dtype": harness.dtype_name(dtype),
            "t_reference_s": t["reference"], "t_fused_s": t["fused"], "t_gemms_s": t["gemms"],
            "measured_reference_over_fused": t["reference"] / t["fused"],
            "bound_reference_over_fused": t["reference"] / t["gemms"]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=harness.TIMING_ROUNDS)
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds of timing per step and shape, split over the rounds (default: the suites' CPU default)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    options = harness.Options(out_dir=args.out, rounds=args.rounds, min_run_time=args.min_run_time)
    records = []
    for dtype in DTYPES:
        for _, c, hw in GAUSSIAN_SHAPES:
            r = measure(CPU_BATCH, c, hw, dtype, options.timing_rounds(), options.run_time_for("cpu"))
            records.append(r)
            print(f"{r['dtype']} B{CPU_BATCH} C{c} {hw}x{hw}: reference/fused {r['measured_reference_over_fused']:.2f}x, "
                  f"bound {r['bound_reference_over_fused']:.2f}x", flush=True)
    result = {"what": "NLM gaussian fwd+bwd on the CPU: measured reference/fused against the bound of a kernel "
                      "that recomputes S: t_reference / t_seven_gemms (see benchmarks/nlm_gemm_bound.py)",
              "metadata": results.collect_metadata("cpu", options),
              "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "nlm-cpu-gemm-bound.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
