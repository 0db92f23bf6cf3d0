#pragma once
// 3x3 median filter device code: forward and backward kernels with their launchers.
// Free of CUDA runtime and torch headers (nvcc, or g++ through csrc/emu/cuda_emu.h).
//
// Forward: one thread per output element (each block a contiguous range, block_range, so the
// rows above and below a block's pixels are mostly its own: read once; 64-bit indices): nine
// loads of the reflected window, converted to the accumulation type, and the median network of
// csrc/kernels/median.h, the same maths as the CPU kernel.
// Backward, a gather: one thread per input element; it visits its nine neighbouring outputs
// in window order and adds the upstream gradient of those whose selected pixel is itself.
// Each block stages the arg and upstream gradient of its kStep consecutive pixels and their
// neighbours (W + 1 elements either side: the rows above and below) in shared memory with
// row-wide coalesced loads, then gathers from there; rows too wide for that (the staged span
// past the 48 KB of shared memory) gather straight from global memory instead. Every thread
// reads each neighbour (the pixel's own at the border) and a select keeps the picked ones, so
// no warp access is left to scattered lanes (and never a multiply by 0: 0 * NaN is NaN). No
// atomics, a fixed order: deterministic, and bitwise equal to the CPU kernel's sum (the selects
// add +0, which changes no sum that starts at +0).
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../kernels/median.h"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace median {

using ::fastrobust::median::BackwardPtrs;
using ::fastrobust::median::ForwardPtrs;
namespace mm = ::fastrobust::median;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // then each block takes a longer range
constexpr size_t kStagedSmemLimit = 48 * 1024;  // the default dynamic shared memory per block

inline dim3 elementwise_grid(int64_t numel) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(numel, kThreads), kMaxBlocks)));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) median3x3_forward_kernel(ForwardPtrs<scalar_t> a) {
  using acc = acc_t<scalar_t>;
  const int64_t H = a.height, W = a.width, plane_size = H * W;
  FR_GLOBAL(scalar_t) y = a.y;
  FR_GLOBAL(uint8_t) arg = a.arg;
  block_range(a.planes * plane_size, [&](int64_t i) {
    const int64_t plane = i / plane_size, rem = i - plane * plane_size;
    const int64_t h = rem / W, w = rem - h * W;
    FR_GLOBAL(const scalar_t) x = a.x + plane * plane_size;
    int64_t rows[3], cols[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      rows[k] = mm::reflect<int64_t>(h + k - 1, H) * W;
      cols[k] = mm::reflect<int64_t>(w + k - 1, W);
    }
    acc v[mm::kWindow];
#pragma unroll
    for (int k = 0; k < mm::kWindow; ++k) v[k] = static_cast<acc>(x[rows[k / 3] + cols[k % 3]]);
    const mm::Selected<acc, int> s = mm::median_of_nine<acc, int>(v);
    y[i] = static_cast<scalar_t>(s.value);
    arg[i] = static_cast<uint8_t>(s.position);
  });
}

// The gradient pixel i collects: the nine outputs o around it (window order), read through
// at(offset of o from i, whether o is in the plane), a picked one adding its upstream gradient
// (the values read for an o outside the plane are never picked).
template <typename acc, typename Read>
__device__ __forceinline__ acc gather_picked(int64_t h, int64_t w, int64_t H, int64_t W, Read at) {
  acc sum = acc(0);
#pragma unroll
  for (int e = 0; e < mm::kWindow; ++e) {
    const int64_t oh = h + e / 3 - 1, ow = w + e % 3 - 1;
    const bool inside = oh >= 0 && oh < H && ow >= 0 && ow < W;
    const auto got = at((e / 3 - 1) * W + (e % 3 - 1), inside);  // (position, gradient)
    FR_DEVICE_ASSERT(got.first < mm::kWindow, "_median3x3_backward: arg must hold window positions in [0, 9)");
    const bool picked = inside && mm::source_offset<int64_t>(got.first, oh, ow, H, W) == mm::opposite(e);
    sum += picked ? got.second : acc(0);
  }
  return sum;
}

template <typename acc>
struct PositionAndGradient {
  int first;
  acc second;
};

// Pixels per block of the staged backward, and the shared memory it stages them in: the arg
// (as acc, exact for 0..9) and the upstream gradient of the span [first - W - 1, first + kStep
// + W + 1) widened to whole kAlign-element pieces, so that every warp's load starts on a
// 32-byte sector (the tensors' storage is at least 64-byte aligned) and no warp is partial.
constexpr int64_t kStep = 8 * kThreads;
constexpr int64_t kAlign = 32;

FR_HOST_DEVICE int64_t floor_to(int64_t a, int64_t m) { return (a >= 0 ? a : a - (m - 1)) / m * m; }

// The most elements a block stages: its span, widened by less than kAlign at either end.
FR_HOST_DEVICE int64_t staged_span(int64_t W) { return kStep + 2 * (W + 1) + 2 * kAlign; }

template <typename acc>
inline size_t staged_smem_bytes(int64_t W) { return size_t(2 * staged_span(W)) * sizeof(acc); }

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) median3x3_backward_staged_kernel(BackwardPtrs<scalar_t> a) {
  using acc = acc_t<scalar_t>;
  const int64_t H = a.height, W = a.width, plane_size = H * W, n = a.planes * plane_size;
  const int64_t halo = W + 1;
  const int64_t first = int64_t(blockIdx.x) * kStep;
  const int64_t begin = floor_to(first - halo, kAlign);
  const int64_t count = floor_to(first + kStep + halo + kAlign - 1, kAlign) - begin;  // <= staged_span(W)
  FR_DYNAMIC_SMEM(acc, smem);
  const smem_ptr<acc> grads = smem, positions = smem + staged_span(W);
  FR_GLOBAL(const uint8_t) arg = a.arg;
  FR_GLOBAL(const scalar_t) grad_y = a.grad_y;
  FR_GLOBAL(scalar_t) grad_x = a.grad_x;
  for (int64_t j = threadIdx.x; j < count; j += kThreads) {
    const int64_t e = begin + j;
    const bool real = e >= 0 && e < n;  // past either end of the tensor: never read below
    grads[j] = real ? static_cast<acc>(grad_y[e]) : acc(0);
    positions[j] = real ? static_cast<acc>(arg[e]) : acc(0);
  }
  __syncthreads();
  for (int64_t l = threadIdx.x; l < kStep; l += kThreads) {
    const int64_t i = first + l;
    if (i >= n) break;
    const int64_t rem = i % plane_size, h = rem / W, w = rem - h * W;
    const int64_t centre = i - begin;
    // every neighbour is staged (zeros past the tensor's ends), in the plane or not: a warp's
    // reads stay one run of consecutive words (a lane reading elsewhere at a row's end would
    // share a bank with the run)
    grad_x[i] = static_cast<scalar_t>(gather_picked<acc>(h, w, H, W, [&](int64_t offset, bool) {
      return PositionAndGradient<acc>{static_cast<int>(positions[centre + offset]), grads[centre + offset]};
    }));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) median3x3_backward_direct_kernel(BackwardPtrs<scalar_t> a) {
  using acc = acc_t<scalar_t>;
  const int64_t H = a.height, W = a.width, plane_size = H * W;
  FR_GLOBAL(const uint8_t) arg = a.arg;
  FR_GLOBAL(const scalar_t) grad_y = a.grad_y;
  FR_GLOBAL(scalar_t) grad_x = a.grad_x;
  block_range(a.planes * plane_size, [&](int64_t i) {
    const int64_t rem = i % plane_size, h = rem / W, w = rem - h * W;
    grad_x[i] = static_cast<scalar_t>(gather_picked<acc>(h, w, H, W, [&](int64_t offset, bool inside) {
      const int64_t o = inside ? i + offset : i;  // the pixel's own outside the plane: in the tensor
      return PositionAndGradient<acc>{static_cast<int>(arg[o]), static_cast<acc>(grad_y[o])};
    }));
  });
}

template <typename scalar_t>
void launch_forward(const ForwardPtrs<scalar_t>& a, cudaStream_t stream) {
  FR_LAUNCH(median3x3_forward_kernel<scalar_t>, elementwise_grid(a.planes * a.height * a.width), dim3(kThreads), 0,
            stream, a);
}

template <typename scalar_t>
void launch_backward(const BackwardPtrs<scalar_t>& a, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  const int64_t numel = a.planes * a.height * a.width;
  const size_t smem = staged_smem_bytes<acc>(a.width);
  const int64_t blocks = ceil_div<int64_t>(numel, kStep);
  if (smem <= kStagedSmemLimit && blocks <= int64_t(INT32_MAX)) {
    FR_LAUNCH(median3x3_backward_staged_kernel<scalar_t>, dim3(static_cast<unsigned>(blocks)),
              dim3(kThreads), smem, stream, a);
  } else {
    FR_LAUNCH(median3x3_backward_direct_kernel<scalar_t>, elementwise_grid(numel), dim3(kThreads), 0, stream, a);
  }
}

}  // namespace median
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
