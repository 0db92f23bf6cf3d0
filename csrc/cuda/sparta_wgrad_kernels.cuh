#pragma once
// Sparta's weight and bias gradients from the backward's per-block partial sums: their
// layout in the scratch buffer and the kernel that adds them in a fixed order (the
// gradients are deterministic, unlike one atomic per tap). Device code free of CUDA runtime
// and torch headers, like sparta_kernels.cuh, so that the emulator compiles it too.
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace sparta {

constexpr int kReduceThreads = 256;

// Partials a 32-byte sector holds in fp32 (8; in fp64 a sector holds 4, which divides it):
// channels' partials start, and the reduction's passes step, on sector boundaries.
constexpr int kPartialsAlign = 8;

// Distance between two channels' partials: their blocks * taps words, rounded up to whole
// sectors.
FR_HOST_DEVICE int64_t partials_stride(int64_t blocks, int taps) {
  return (blocks * taps + kPartialsAlign - 1) / kPartialsAlign * kPartialsAlign;
}

// Rows the reduction's block reads per pass: as many as its kReduceThreads threads hold, a
// multiple of kPartialsAlign words in all (taps <= 50 leaves at least 4 rows).
FR_HOST_DEVICE int pass_rows(int taps) {
  int rows = kReduceThreads / taps;
  while (rows > 1 && rows * taps % kPartialsAlign != 0) --rows;
  return rows;
}

// grad_w[c, t] (t < K*K) and grad_b[c] (t = K*K), in the parameters' dtype: one block per
// channel sums the channel's rows of partials ((blocks, taps), contiguous). Thread j takes
// column j % taps of rows j / taps, j / taps + steps, ...: each pass of the block reads
// steps * taps consecutive words, whole sectors from a sector boundary (coalesced), and every
// thread's column stays fixed. The first `taps` threads then add the `steps` sums of their
// column and store the channel's taps together. A fixed order throughout (deterministic);
// chains of blocks / steps and steps dependent adds. Rounding to scalar_t here makes the
// cast one kernel with the sum.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
reduce_partials_kernel(FR_GLOBAL_RESTRICT(const acc_t<scalar_t>) partials, FR_GLOBAL_RESTRICT(scalar_t) grad_w,
                       FR_GLOBAL_RESTRICT(scalar_t) grad_b, int64_t channels, int taps, int64_t blocks) {
  using acc = acc_t<scalar_t>;
  FR_SHARED(acc, sums, kReduceThreads);
  const int j = threadIdx.x;
  const int steps = pass_rows(taps);
  const int span = steps * taps;
  const int64_t n = blocks * taps;
  // Block-uniform loop: every thread reaches the barriers.
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    FR_GLOBAL(const acc) p = partials + c * partials_stride(blocks, taps);
    acc sum = acc(0);
    if (j < span)
      for (int64_t e = j; e < n; e += span) sum += p[e];
    sums[j] = sum;
    __syncthreads();
    if (j < taps) {
      acc total = acc(0);
      for (int g = 0; g < steps; ++g) total += acc(sums[g * taps + j]);
      const scalar_t v = static_cast<scalar_t>(total);
      if (j < taps - 1)
        grad_w[c * (taps - 1) + j] = v;
      else
        grad_b[c] = v;
    }
    __syncthreads();  // sums is rewritten for the next channel
  }
}

// partials: per channel, partials_stride(blocks, taps) words (rows of `taps` words, one a
// block of the backward); grad_w (C, taps - 1) and grad_b (C) in scalar_t, every element
// written.
template <typename scalar_t>
void launch_reduce_partials(const acc_t<scalar_t>* partials, scalar_t* grad_w, scalar_t* grad_b,
                            int64_t channels, int taps, int64_t blocks, cudaStream_t stream) {
  auto kernel = reduce_partials_kernel<scalar_t>;
  FR_LAUNCH(kernel, dim3(static_cast<unsigned>(std::min<int64_t>(channels, 65535))), dim3(kReduceThreads), 0,
            stream, partials, grad_w, grad_b, channels, taps, blocks);
}

}  // namespace sparta
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
