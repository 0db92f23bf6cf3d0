"""The H100 roofline that the GPU cost model and the NLM dispatch compare against: a kernel
takes at least max(bytes / HBM bandwidth, FLOPs / peak). A model, never a measurement."""
from __future__ import annotations

HBM_BYTES_PER_S = 3.35e12  # H100 SXM
# Dense peak FLOP/s of an H100 SXM for the kernels of each dtype: fp32 (67 TFLOP/s) and fp64
# (34 TFLOP/s; its 67 are on the tensor cores, which our fp64 kernels do not use) on the SIMT
# cores, bf16 and fp16 on the tensor cores; "tf32": fp32 products on the tensor cores.
PEAK_FLOPS = {"float32": 67e12, "float64": 34e12, "bfloat16": 989e12, "float16": 989e12, "tf32": 495e12}


def roofline_us(nbytes: float, flops: float, dtype: str, simt_flops: float = 0.0) -> float:
    """max(bytes / HBM bandwidth, FLOPs / peak), in microseconds: a lower bound. simt_flops:
    more FLOPs at the fp32 SIMT peak, where dtype's peak is the tensor cores' ("tf32") and the
    kernels also do fp32 arithmetic off them."""
    seconds = flops / PEAK_FLOPS.get(dtype, 67e12) + simt_flops / PEAK_FLOPS["float32"]
    return 1e6 * max(nbytes / HBM_BYTES_PER_S, seconds)
