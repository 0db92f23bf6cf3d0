#pragma once
// The backward's row dots D_i = dy_i . y_i of softmax non-local means (device code and its
// launcher), read by the SIMT plane kernels (nlm_kernels.cuh) and the tensor-core backward
// (nlm_mma_backward.cuh). Free of CUDA runtime and torch headers (nvcc, or g++ through
// csrc/emu/cuda_emu.h).
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../kernels/nlm.h"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

using ::fastrobust::nlm::Ptrs;

// D_i = sum_c dy_ic y_ic, as row_dot_parts(C) partial sums over consecutive groups of channels
// (blockIdx.z: the group). A block owns kWarpSize consecutive rows of one sample (a lane each:
// coalesced loads) and splits its group's channels over its kRowDotWarps warps (warp w: the
// group's channels w, w + kRowDotWarps, ...); their partial sums are added in warp order
// through shared memory (deterministic). One thread walking all C channels of its row alone
// gave B*N threads a chain of C loads each: 49 blocks of 128 threads at (8, 1024, 28x28); one
// group, 200 blocks of 256 threads (0.19 waves on an H100), 8 groups 1600.
constexpr int kRowDotWarps = 8;
constexpr int64_t kRowDotMinChannels = 8;  // per warp and group, at least
constexpr int64_t kRowDotMaxParts = 16;

// The groups for C channels: fixed by C alone, so that the sums (and the gradients) are the
// same on every device; the launcher, the kernel and the readers each derive them from C. The
// readers add up at most kRowDotMaxParts partial sums per row.
FR_HOST_DEVICE int64_t row_dot_parts(int64_t channels) {
  const int64_t groups = channels / (kRowDotWarps * kRowDotMinChannels);
  return groups < 1 ? 1 : (groups > kRowDotMaxParts ? kRowDotMaxParts : groups);
}

// D_i of row i of sample b: its partial sums, added in group order.
template <typename scalar_t, typename acc>
__device__ __forceinline__ acc row_dot_of(const Ptrs<scalar_t, acc>& a, int64_t b, int64_t i) {
  FR_GLOBAL(const acc) parts = a.row_dot;
  acc d = parts[b * a.positions + i];
  const int64_t groups = row_dot_parts(a.channels);
  for (int64_t s = 1; s < groups; ++s) d += parts[(s * a.batch + b) * a.positions + i];
  return d;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kRowDotWarps * kWarpSize) row_dot_kernel(Ptrs<scalar_t, acc_t<scalar_t>> a) {
  using acc = acc_t<scalar_t>;
  FR_SHARED(acc, partial, kRowDotWarps * kWarpSize);
  const int64_t n = a.positions;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t b = blockIdx.y, i = int64_t(blockIdx.x) * kWarpSize + lane, part = blockIdx.z;
  const int64_t per_part = ceil_div<int64_t>(a.channels, gridDim.z);
  const int64_t c0 = std::min(a.channels, part * per_part), c1 = std::min(a.channels, c0 + per_part);
  acc d = 0;
  if (i < n) {
    FR_GLOBAL(const scalar_t) dy = a.grad_y + b * a.channels * n + i;
    FR_GLOBAL(const scalar_t) y = a.y + b * a.channels * n + i;
    for (int64_t c = c0 + warp; c < c1; c += kRowDotWarps) d += acc(dy[c * n]) * acc(y[c * n]);
    FR_COUNT_FMA(c1 - c0 > warp ? (c1 - c0 - warp + kRowDotWarps - 1) / kRowDotWarps : 0);
  }
  partial[warp * kWarpSize + lane] = d;
  __syncthreads();
  if (warp != 0 || i >= n) return;
  acc sum = 0;
  for (int w = 0; w < kRowDotWarps; ++w) sum += partial[w * kWarpSize + lane];
  FR_GLOBAL(acc) row_dot = a.row_dot;
  row_dot[(part * a.batch + b) * n + i] = sum;
}

template <typename scalar_t>
void launch_row_dot(const Ptrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  TORCH_CHECK(a.batch <= 65535, "nlm_gaussian: batch ", a.batch, " is too large for one launch (at most 65535)");
  const int64_t row_blocks = ceil_div<int64_t>(a.positions, kWarpSize);
  TORCH_CHECK(row_blocks <= INT32_MAX, "nlm_gaussian: too many positions for one launch");
  FR_LAUNCH(row_dot_kernel<scalar_t>,
            dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(a.batch),
                 static_cast<unsigned>(row_dot_parts(a.channels))),
            dim3(kRowDotWarps * kWarpSize), 0, stream, a);
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
