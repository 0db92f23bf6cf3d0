// 3x3 median filter, CPU backend: at::parallel_for over the B*C planes.
//
// Forward: a plane is copied once, converted to the accumulation type, into a buffer with a
// one-pixel reflected border ((H + 2) x (W + 2)); every output row is then one loop over the
// columns whose nine loads sit at fixed offsets of three buffer rows, and the median network
// of csrc/kernels/median.h (the CUDA kernel's own maths) runs branch-free in vector lanes.
// Backward (a gather, no scatter): the upstream gradient and, per output, the source offset of
// its selected pixel (csrc/kernels/median.h: source_offset; equal to arg away from the
// borders) are copied into (H + 2) x (W + 2) buffers whose border holds no output (gradient 0,
// offset -1); grad_x[p] is then the sum, over the nine neighbouring outputs in window order,
// of those whose offset points back at p: fixed order, deterministic, vectorised over columns.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../kernels/median.h"
#include "../ops/median.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using namespace median;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

// Planes per task: about kGrainElems elements.
constexpr int64_t kGrainElems = 32768;

int64_t grain_planes(int64_t plane_size) {
  return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(plane_size, 1));
}

// The plane x (H x W) into pad ((H + 2) x (W + 2)) with its reflected border.
template <typename scalar_t, typename acc>
inline void pad_plane(const scalar_t* __restrict__ x, int64_t H, int64_t W, acc* __restrict__ pad) {
  const int64_t row = W + 2;
  const int64_t left = reflect<int64_t>(-1, W), right = reflect<int64_t>(W, W);
  for (int64_t r = 0; r < H + 2; ++r) {
    const scalar_t* __restrict__ src = x + reflect<int64_t>(r - 1, H) * W;
    acc* __restrict__ dst = pad + r * row;
    dst[0] = static_cast<acc>(src[left]);
    for (int64_t w = 0; w < W; ++w) dst[1 + w] = static_cast<acc>(src[w]);
    dst[W + 1] = static_cast<acc>(src[right]);
  }
}

// Outputs of the 16-bit types go through a float row and are converted in a loop of their
// own, so that the median loop works on one type and lane width.
template <typename scalar_t, typename acc>
inline void store_row(const acc* __restrict__ src, scalar_t* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

template <typename scalar_t>
FR_CPU_MULTIVERSION void forward_plane(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                       uint8_t* __restrict__ arg, int64_t H, int64_t W,
                                       typename cpu_acc<scalar_t>::type* __restrict__ pad,
                                       typename cpu_acc<scalar_t>::type* __restrict__ row_out) {
  using acc = typename cpu_acc<scalar_t>::type;
  constexpr bool direct = std::is_same_v<scalar_t, acc>;
  pad_plane(x, H, W, pad);
  const int64_t row = W + 2;
  for (int64_t h = 0; h < H; ++h) {
    const acc* __restrict__ r0 = pad + h * row;
    const acc* __restrict__ r1 = r0 + row;
    const acc* __restrict__ r2 = r1 + row;
    acc* yh = row_out;
    if constexpr (direct) yh = y + h * W;
    uint8_t* __restrict__ ah = arg + h * W;
    for (int64_t w = 0; w < W; ++w) {
      const acc v[kWindow] = {r0[w], r0[w + 1], r0[w + 2], r1[w], r1[w + 1], r1[w + 2], r2[w], r2[w + 1], r2[w + 2]};
      const Selected<acc, acc> s = median_of_nine<acc, acc>(v);
      yh[w] = s.value;
      ah[w] = static_cast<uint8_t>(static_cast<int>(s.position));
    }
    if constexpr (!direct) store_row(row_out, y + h * W, W);
  }
}

// Source offsets (as acc, -1 where no output) and the upstream gradient of one plane, into
// (H + 2) x (W + 2) buffers with an empty border.
template <typename scalar_t, typename acc>
inline void pad_outputs(const scalar_t* __restrict__ grad_y, const uint8_t* __restrict__ arg, int64_t H, int64_t W,
                        acc* __restrict__ gpad, acc* __restrict__ opad) {
  const int64_t row = W + 2;
  std::fill(gpad, gpad + row, acc(0));
  std::fill(opad, opad + row, acc(-1));
  std::fill(gpad + (H + 1) * row, gpad + (H + 2) * row, acc(0));
  std::fill(opad + (H + 1) * row, opad + (H + 2) * row, acc(-1));
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* __restrict__ g = grad_y + h * W;
    const uint8_t* __restrict__ a = arg + h * W;
    acc* __restrict__ gd = gpad + (h + 1) * row;
    acc* __restrict__ od = opad + (h + 1) * row;
    gd[0] = gd[W + 1] = acc(0);
    od[0] = od[W + 1] = acc(-1);
    for (int64_t w = 0; w < W; ++w) gd[1 + w] = static_cast<acc>(g[w]);
    if (h >= 1 && h + 1 < H) {
      // Away from the borders nothing is reflected: the offset is the window position.
      for (int64_t w = 1; w + 1 < W; ++w) od[1 + w] = static_cast<acc>(a[w]);
      od[1] = static_cast<acc>(source_offset<int64_t>(a[0], h, 0, H, W));
      if (W > 1) od[W] = static_cast<acc>(source_offset<int64_t>(a[W - 1], h, W - 1, H, W));
    } else {
      for (int64_t w = 0; w < W; ++w) od[1 + w] = static_cast<acc>(source_offset<int64_t>(a[w], h, w, H, W));
    }
  }
}

template <typename scalar_t>
FR_CPU_MULTIVERSION void backward_plane(const scalar_t* __restrict__ grad_y, const uint8_t* __restrict__ arg,
                                        scalar_t* __restrict__ grad_x, int64_t H, int64_t W,
                                        typename cpu_acc<scalar_t>::type* __restrict__ gpad,
                                        typename cpu_acc<scalar_t>::type* __restrict__ opad,
                                        typename cpu_acc<scalar_t>::type* __restrict__ row_out) {
  using acc = typename cpu_acc<scalar_t>::type;
  constexpr bool direct = std::is_same_v<scalar_t, acc>;
  pad_outputs(grad_y, arg, H, W, gpad, opad);
  const int64_t row = W + 2;
  for (int64_t h = 0; h < H; ++h) {
    // The output at window offset e = (ey + 1) * 3 + (ex + 1) from input (h, w) sits at
    // buffer index (h + 1 + ey) * row + (w + 1 + ex) = h * row + w + (ey + 1) * row + (ex + 1).
    const acc* __restrict__ g = gpad + h * row;
    const acc* __restrict__ o = opad + h * row;
    acc* out = row_out;
    if constexpr (direct) out = grad_x + h * W;
    for (int64_t w = 0; w < W; ++w) {
      acc sum = acc(0);
#pragma GCC unroll 9
      for (int e = 0; e < kWindow; ++e) {
        const int64_t k = w + (e / 3) * row + (e % 3);
        sum += o[k] == acc(opposite(e)) ? g[k] : acc(0);
      }
      out[w] = sum;
    }
    if constexpr (!direct) store_row(row_out, grad_x + h * W, W);
  }
}

std::tuple<at::Tensor, at::Tensor> median3x3_cpu(const at::Tensor& x) {
  const Prepared p = prepare(x);
  at::Tensor y = at::empty_like(p.x, at::MemoryFormat::Contiguous);
  at::Tensor arg = at::empty(p.x.sizes(), p.x.options().dtype(at::kByte));
  if (y.numel() == 0) return {y, arg};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "median3x3", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto a = forward_ptrs<scalar_t>(p, y, arg);
    const int64_t plane_size = a.height * a.width;
    at::parallel_for(0, a.planes, grain_planes(plane_size), [&](int64_t q0, int64_t q1) {
      std::vector<acc> pad((a.height + 2) * (a.width + 2)), row_out(a.width);
      for (int64_t q = q0; q < q1; ++q)
        forward_plane(a.x + q * plane_size, a.y + q * plane_size, a.arg + q * plane_size, a.height, a.width,
                      pad.data(), row_out.data());
    });
  });
  return {y, arg};
}

at::Tensor median3x3_backward_cpu(const at::Tensor& grad_y, const at::Tensor& arg) {
  const Prepared p = prepare_backward(grad_y, arg);
  at::Tensor grad_x = at::empty_like(p.grad_y, at::MemoryFormat::Contiguous);
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.grad_y.scalar_type(), "median3x3_backward", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto a = backward_ptrs<scalar_t>(p, grad_x);
    const int64_t plane_size = a.height * a.width;
    at::parallel_for(0, a.planes, grain_planes(plane_size), [&](int64_t q0, int64_t q1) {
      const int64_t padded = (a.height + 2) * (a.width + 2);
      std::vector<acc> gpad(padded), opad(padded), row_out(a.width);
      for (int64_t q = q0; q < q1; ++q)
        backward_plane(a.grad_y + q * plane_size, a.arg + q * plane_size, a.grad_x + q * plane_size, a.height,
                       a.width, gpad.data(), opad.data(), row_out.data());
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("median3x3", &median3x3_cpu);
  m.impl("_median3x3_backward", &median3x3_backward_cpu);
}

}  // namespace fastrobust
