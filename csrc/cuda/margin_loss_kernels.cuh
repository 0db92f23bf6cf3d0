#pragma once
// Margin-loss device code, two kernels by the number of classes:
//   - more than kSmallClasses: one warp per row. Each lane scans a strided share of the row's
//     logits into its own statistics (top four, largest other than the excluded class), the
//     warp merges them by a shuffle butterfly, and every lane then holds the row's loss terms:
//     lane 0 writes the loss (forward), the lanes write the row's gradient (backward).
//   - up to kSmallClasses (CIFAR-10's 10): one thread per row. A warp per row would leave most
//     of its lanes idle and read each row's label, target and upstream gradient with 32 lanes
//     on one sector. The block's rows of logits come into shared memory by one flat coalesced
//     load; each thread reads its row's scalars (consecutive rows: coalesced), scans its row
//     there and writes its loss (coalesced); the backward's gradient rows go back through
//     shared memory and leave by one flat coalesced store.
// Free of CUDA runtime and torch headers (nvcc, or g++ through csrc/emu/cuda_emu.h).
#include <algorithm>
#include <cstdint>
#include <limits>

#include "../common/cuda_utils.cuh"
#include "../common/elementwise.cuh"
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

// A row's label y, target t (kNoClass untargeted) and the class its `other` statistic
// excludes, after the device-side check that they are class indices.
struct RowClasses {
  int y, t, excluded;
};

template <typename scalar_t, typename acc>
__device__ RowClasses row_classes(const MarginPtrs<scalar_t, acc>& p, int64_t row) {
  FR_DEVICE_ASSERT(p.valid(row), "margin_loss: labels and targets must be class indices in [0, classes)");
  FR_GLOBAL(const int64_t) labels = p.labels;
  FR_GLOBAL(const int64_t) targets = p.targets;
  return {static_cast<int>(int64_t(labels[row])),
          p.targets ? static_cast<int>(int64_t(targets[row])) : mm::kNoClass, p.excluded(row)};
}

template <typename scalar_t, bool backward>
__global__ void margin_loss_kernel(MarginPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= p.rows) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const int64_t classes = p.classes;
  const auto [y, t, excluded] = row_classes(p, row);
  FR_GLOBAL(const scalar_t) z = p.logits + row * classes;
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

constexpr int64_t kSmallClasses = 32;
constexpr int kSmallRows = 64;  // rows (threads) per block of the small-class kernel

// Row stride of the small-class kernel's staged logits: odd, so that the 32 threads of a warp,
// each reading its own row at the same column, hit 32 distinct banks. The flat staging loops
// then write and read a warp's 32 elements over a few more than 32 words, so about half their
// accesses take two wavefronts (the cost model's factor: 1.5). Loops that walk the shared
// slots in order instead are conflict-free but leave a lane idle at each padding slot; the
// cost model gave them 55 % sector efficiency, against 100 % for these.
FR_HOST_DEVICE int64_t small_row_stride(int64_t classes) { return classes | 1; }

// Up to kSmallClasses classes: a thread per row (see the top of this file). `cols` finds an
// element's row in the block's flat range (no division per element).
template <typename scalar_t, bool backward>
__global__ void margin_loss_small_kernel(MarginPtrs<scalar_t, acc_t<scalar_t>> p, RowDivider cols) {
  using acc = acc_t<scalar_t>;
  FR_DYNAMIC_SMEM(acc, staged);  // kSmallRows x small_row_stride(classes)
  const int64_t classes = p.classes, stride = small_row_stride(classes);
  const int64_t row0 = int64_t(blockIdx.x) * kSmallRows;
  const int64_t rows = std::min<int64_t>(kSmallRows, p.rows - row0), elems = rows * classes;
  FR_GLOBAL(const scalar_t) z = p.logits + row0 * classes;
  for (int64_t e = threadIdx.x; e < elems; e += blockDim.x) {
    const int64_t r = cols.of(e);
    staged[r * stride + (e - r * classes)] = acc(z[e]);
  }
  __syncthreads();
  const int64_t r = threadIdx.x, row = row0 + r;
  if (r < rows) {
    const auto [y, t, excluded] = row_classes(p, row);
    smem_ptr<acc> zr = staged + r * stride;
    RowStats<acc> s;
    for (int c = 0; c < classes; ++c) s.push(acc(zr[c]), c, excluded);
    s.z_y = acc(zr[y]);
    if (p.targets) s.z_t = acc(zr[t]);
    const Terms<acc> tm = mm::terms(p.kind, p.targets != nullptr, s, y, t, p.kappa);
    FR_GLOBAL(scalar_t) out = p.out;
    if (!backward) {
      out[row] = tm.loss;
    } else {
      FR_GLOBAL(const scalar_t) grad_loss = p.grad_loss;
      const acc g = acc(grad_loss[row]);
      for (int c = 0; c < classes; ++c) zr[c] = g * mm::coefficient(tm, c);
    }
  }
  if (!backward) return;
  __syncthreads();
  FR_GLOBAL(scalar_t) grad = p.out + row0 * classes;
  for (int64_t e = threadIdx.x; e < elems; e += blockDim.x) {
    const int64_t rr = cols.of(e);
    grad[e] = static_cast<scalar_t>(acc(staged[rr * stride + (e - rr * classes)]));
  }
}

template <typename scalar_t, bool backward>
void launch(const MarginPtrs<scalar_t, acc_t<scalar_t>>& p, cudaStream_t stream) {
  if (p.classes <= kSmallClasses) {
    const int64_t blocks = ceil_div<int64_t>(p.rows, kSmallRows);
    TORCH_CHECK(blocks <= INT32_MAX, "logits: too many rows for one launch (", p.rows, ")");
    const size_t smem = kSmallRows * small_row_stride(p.classes) * sizeof(acc_t<scalar_t>);
    FR_LAUNCH((margin_loss_small_kernel<scalar_t, backward>), dim3(static_cast<unsigned>(blocks)), dim3(kSmallRows),
              smem, stream, p, RowDivider(p.classes));
    return;
  }
  const int64_t blocks = ceil_div<int64_t>(p.rows, kRowsPerBlock);
  TORCH_CHECK(blocks <= INT32_MAX, "logits: too many rows for one launch (", p.rows, ")");
  FR_LAUNCH((margin_loss_kernel<scalar_t, backward>), dim3(static_cast<unsigned>(blocks)),
            dim3(kRowsPerBlock * kWarpSize), 0, stream, p);
}

}  // namespace margin
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
