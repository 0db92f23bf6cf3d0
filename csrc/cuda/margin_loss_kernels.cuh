#pragma once
// Margin-loss device code: one warp per row. Each lane scans a strided share of the row's
// logits into its own statistics (top four, largest other than the excluded class), the
// warp merges them by a shuffle butterfly, and every lane then holds the row's loss terms:
// lane 0 writes the loss (forward), the lanes write the row's gradient (backward).
// Free of CUDA runtime and torch headers (nvcc, or g++ through csrc/emu/cuda_emu.h).
#include <cstdint>
#include <limits>

#include "../common/cuda_utils.cuh"
#include "../kernels/margin_loss.h"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace margin {

using ::fastrobust::margin::MarginPtrs;
using ::fastrobust::margin::RowStats;
using ::fastrobust::margin::Terms;
namespace mm = ::fastrobust::margin;

constexpr int kRowsPerBlock = 4;

// After the butterfly every lane holds the statistics of the whole row.
template <typename acc>
__device__ __forceinline__ void warp_merge(RowStats<acc>& s) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    acc v[4];
    int i[4];
    for (int k = 0; k < 4; ++k) {
      v[k] = __shfl_xor_sync(0xffffffffu, s.top.v[k], offset);
      i[k] = __shfl_xor_sync(0xffffffffu, s.top.i[k], offset);
    }
    const acc other_v = __shfl_xor_sync(0xffffffffu, s.other.v, offset);
    const int other_i = __shfl_xor_sync(0xffffffffu, s.other.i, offset);
    s.has_nan |= __shfl_xor_sync(0xffffffffu, s.has_nan, offset);
    for (int k = 0; k < 4; ++k) s.top.push(v[k], i[k]);
    s.other.push(other_v, other_i);
  }
}

template <typename scalar_t, bool backward>
__global__ void margin_loss_kernel(MarginPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= p.rows) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const int64_t classes = p.classes;
  FR_DEVICE_ASSERT(p.valid(row), "margin_loss: labels and targets must be class indices in [0, classes)");
  FR_GLOBAL(const scalar_t) z = p.logits + row * classes;
  FR_GLOBAL(const int64_t) labels = p.labels;
  FR_GLOBAL(const int64_t) targets = p.targets;
  const int y = static_cast<int>(int64_t(labels[row]));
  const int t = p.targets ? static_cast<int>(int64_t(targets[row])) : mm::kNoClass;
  const int excluded = p.excluded(row);
  RowStats<acc> s;
  for (int64_t c = lane; c < classes; c += kWarpSize) s.push(acc(z[c]), static_cast<int>(c), excluded);
  warp_merge(s);
  s.z_y = acc(z[y]);
  if (p.targets) s.z_t = acc(z[t]);
  const Terms<acc> tm = mm::terms(p.kind, p.targets != nullptr, s, y, t, p.kappa);
  FR_GLOBAL(scalar_t) out = p.out;
  if (!backward) {
    if (lane == 0) out[row] = tm.loss;
    return;
  }
  FR_GLOBAL(const scalar_t) grad_loss = p.grad_loss;
  const acc g = acc(grad_loss[row]);
  for (int64_t c = lane; c < classes; c += kWarpSize)
    out[row * classes + c] = g * mm::coefficient(tm, static_cast<int>(c));
}

template <typename scalar_t, bool backward>
void launch(const MarginPtrs<scalar_t, acc_t<scalar_t>>& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div<int64_t>(p.rows, kRowsPerBlock);
  TORCH_CHECK(blocks <= INT32_MAX, "logits: too many rows for one launch (", p.rows, ")");
  FR_LAUNCH((margin_loss_kernel<scalar_t, backward>), dim3(static_cast<unsigned>(blocks)),
            dim3(kRowsPerBlock * kWarpSize), 0, stream, p);
}

}  // namespace margin
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
