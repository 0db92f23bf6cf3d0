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
// Every lane loads each neighbour's arg and gradient (the pixel's own at the border), so the
// warp's loads are whole rows, never the scattered lanes a branch would leave; a select keeps
// the picked ones (never a multiply by 0: 0 * NaN is NaN). No atomics, a fixed order:
// deterministic, and bitwise equal to the CPU kernel's sum (the selects add +0, which changes
// no sum that starts at +0).
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
constexpr int64_t kMaxBlocks = 4096;  // then grid-stride

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

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) median3x3_backward_kernel(BackwardPtrs<scalar_t> a) {
  using acc = acc_t<scalar_t>;
  const int64_t H = a.height, W = a.width, plane_size = H * W;
  FR_GLOBAL(const uint8_t) arg = a.arg;
  FR_GLOBAL(const scalar_t) grad_y = a.grad_y;
  FR_GLOBAL(scalar_t) grad_x = a.grad_x;
  block_range(a.planes * plane_size, [&](int64_t i) {
    const int64_t plane = i / plane_size, rem = i - plane * plane_size;
    const int64_t h = rem / W, w = rem - h * W;
    const int64_t base = plane * plane_size;
    acc sum = acc(0);
#pragma unroll
    for (int e = 0; e < mm::kWindow; ++e) {
      const int64_t oh = h + e / 3 - 1, ow = w + e % 3 - 1;
      const bool inside = oh >= 0 && oh < H && ow >= 0 && ow < W;
      const int64_t o = base + (inside ? oh * W + ow : rem);
      const uint8_t position = arg[o];
      FR_DEVICE_ASSERT(position < mm::kWindow, "_median3x3_backward: arg must hold window positions in [0, 9)");
      const acc g = static_cast<acc>(grad_y[o]);
      const bool picked = inside && mm::source_offset<int64_t>(position, oh, ow, H, W) == mm::opposite(e);
      sum += picked ? g : acc(0);
    }
    grad_x[i] = static_cast<scalar_t>(sum);
  });
}

template <typename scalar_t>
void launch_forward(const ForwardPtrs<scalar_t>& a, cudaStream_t stream) {
  FR_LAUNCH(median3x3_forward_kernel<scalar_t>, elementwise_grid(a.planes * a.height * a.width), dim3(kThreads), 0,
            stream, a);
}

template <typename scalar_t>
void launch_backward(const BackwardPtrs<scalar_t>& a, cudaStream_t stream) {
  FR_LAUNCH(median3x3_backward_kernel<scalar_t>, elementwise_grid(a.planes * a.height * a.width), dim3(kThreads), 0,
            stream, a);
}

}  // namespace median
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
