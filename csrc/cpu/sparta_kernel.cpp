// Sparta CPU backend.
//
// Flat formulation. The planes of one channel for a block of images sit back to back in one
// buffer, each preceded by a zero gap of `margin` = R rows + R pixels (R = k/2), with a gap
// after the last one too:
//     [gap][plane b0][gap][plane b0+1] ... [plane b0+nb-1][gap][gap]
// so every tap of the depthwise conv is one loop over the whole block at a fixed offset
// (dh*W + dw): a few thousand elements, whatever the plane size (a 4x4 plane alone would
// give loops of 16). Pixels whose column would wrap into the neighbouring row are removed
// by column masks: on the input side (k masked copies of x, one per column offset) for the
// conv and the weight gradient, on the output side for the transposed conv. Outputs in the
// gaps are computed and dropped (x and grad_y are 0 there). The inner loops are plain FMAs
// with a scalar weight, which the compiler vectorises; the per-element maths comes from
// csrc/kernels/sparta.h, the same functions the CUDA kernels call (with PolyExp).
//
// Work items are (channel, block of images). Per-item sums of the weight/bias gradients
// are reduced in a fixed order afterwards, and the blocking depends on the shape only, so
// results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../kernels/sparta.h"
#include "../ops/sparta.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using Exp = math::PolyExp;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

constexpr int64_t kBlockElems = 2048;  // output positions per work item, roughly (L1/L2-sized)

// Outputs are computed kChunk at a time with all taps accumulated in registers (one pass
// over memory instead of one per tap); buffers are sized in whole chunks so that the last
// chunk may read and write past the block's end.
constexpr int64_t kChunk = 64;

struct Geometry {
  int64_t B, C, H, W, n;  // n = H * W
  int k, r, taps;         // r = k / 2, taps = k * k
  int64_t margin;         // zero gap before each plane (and after the last)
  int64_t stride;         // plane-to-plane distance in a block buffer: n + margin
  int64_t images_per_item;

  Geometry(const at::Tensor& x, const at::Tensor& weight)
      : B(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), n(H * W),
        k(static_cast<int>(weight.size(2))), r(k / 2), taps(k * k), margin(r * W + r),
        stride(n + margin) {
    images_per_item = std::clamp<int64_t>(kBlockElems / std::max<int64_t>(stride, 1), 1,
                                         std::max<int64_t>(B, 1));
  }
  int64_t blocks() const { return (B + images_per_item - 1) / images_per_item; }
  // Output positions of a block of nb images, and the length of its input buffer.
  int64_t out_len(int64_t nb) const { return nb * stride; }
  // Buffers are sized in whole chunks of outputs (kChunk) plus the input margins.
  int64_t out_len_chunked(int64_t nb) const { return (out_len(nb) + kChunk - 1) / kChunk * kChunk; }
  int64_t buf_len(int64_t nb) const { return out_len_chunked(nb) + 2 * margin; }
  // Input buffer index of tap t's pixel for output position i is i + tap_offset(t).
  int64_t tap_offset(int t) const { return margin + (t / k - r) * W + (t % k - r); }
  int tap_column(int t) const { return t % k; }
};

// Column masks for a full block (a shorter last block uses a prefix).
//   in[j][q]:  input position q may feed an output through column offset j - r;
//   out[j][i]: output position i may read through column offset j - r.
// Both are 0 in the gaps. Lengths are rounded up to whole chunks (see kChunk).
template <typename acc>
struct Masks {
  std::vector<acc> in, out;
  int64_t in_len, out_len;

  explicit Masks(const Geometry& g)
      : in_len(g.buf_len(g.images_per_item)), out_len(g.out_len_chunked(g.images_per_item)) {
    in.assign(g.k * in_len, acc(0));
    out.assign(g.k * out_len, acc(0));
    for (int j = 0; j < g.k; ++j) {
      const int64_t dw = j - g.r;
      for (int64_t i = 0; i < g.out_len(g.images_per_item); ++i) {
        const int64_t p = i % g.stride;  // position in its plane (>= n: a gap)
        if (p >= g.n) continue;
        const int64_t col = p % g.W;
        // Output col reads input col + dw; input col feeds output col - dw.
        out[j * out_len + i] = (col + dw >= 0 && col + dw < g.W) ? acc(1) : acc(0);
        in[j * in_len + g.margin + i] = (col - dw >= 0 && col - dw < g.W) ? acc(1) : acc(0);
      }
    }
  }
  const acc* output(int j) const { return out.data() + j * out_len; }
};

// Per-thread buffers, reused across items.
template <typename acc>
struct Scratch {
  std::vector<acc> x, x_masked, grad_y, out, grad_x, grad_z_masked;
};

// The block's planes of x (or grad_y) in block layout, zeros in the gaps; `first` is the
// buffer index of the first plane (margin for an input buffer, 0 for an output-position one).
template <typename scalar_t, typename acc>
inline void load_block(const scalar_t* src, const Geometry& g, int64_t c, int64_t b0, int64_t nb,
                       int64_t first, int64_t len, std::vector<acc>& buf) {
  buf.assign(len, acc(0));
  for (int64_t b = 0; b < nb; ++b) {
    const scalar_t* __restrict__ plane = src + ((b0 + b) * g.C + c) * g.n;
    acc* __restrict__ dst = buf.data() + first + b * g.stride;
    for (int64_t i = 0; i < g.n; ++i) dst[i] = static_cast<acc>(plane[i]);
  }
}

// dst[j] = src * masks[j] for the k column offsets, each `len` long.
template <typename acc>
inline void apply_masks(const acc* src, const acc* masks, int64_t masks_len, int k, int64_t len,
                        std::vector<acc>& dst) {
  dst.resize(k * len);
  for (int j = 0; j < k; ++j) {
    const acc* __restrict__ m = masks + j * masks_len;
    acc* __restrict__ out = dst.data() + j * len;
    for (int64_t q = 0; q < len; ++q) out[q] = src[q] * m[q];
  }
}

// out[l] = init + sum over taps of w[t] * src(t)[i0 + offset(t) + l], l < kChunk, where
// src(t) is the masked copy of the tap's column. Written with GCC vector types so that the
// chunk stays in registers across the taps (as plain loops, GCC interchanges them and the
// tap loop, now innermost, runs scalar).
template <typename acc>
inline void conv_chunk(const acc* masked, int64_t masked_len, const acc* w, const Geometry& g,
                       const int64_t* offsets, int64_t i0, acc init, acc* out) {
  typedef acc Vec __attribute__((vector_size(64)));
  constexpr int kLanesPerVec = 64 / sizeof(acc);
  constexpr int kVecs = kChunk / kLanesPerVec;
  Vec sum[kVecs];
  for (int v = 0; v < kVecs; ++v) sum[v] = Vec{} + init;
  for (int t = 0; t < g.taps; ++t) {
    const acc wt = w[t];
    const acc* src = masked + g.tap_column(t) * masked_len + offsets[t] + i0;
    for (int v = 0; v < kVecs; ++v) {
      Vec x;
      std::memcpy(&x, src + v * kLanesPerVec, sizeof(Vec));  // unaligned load
      sum[v] += wt * x;
    }
  }
  std::memcpy(out, sum, sizeof(sum));
}

template <typename scalar_t, typename acc>
inline void store_block(const acc* block, const Geometry& g, int64_t c, int64_t b0, int64_t nb,
                        scalar_t* dst) {
  for (int64_t b = 0; b < nb; ++b) {
    const acc* __restrict__ src = block + b * g.stride;
    scalar_t* __restrict__ plane = dst + ((b0 + b) * g.C + c) * g.n;
    for (int64_t i = 0; i < g.n; ++i) plane[i] = static_cast<scalar_t>(src[i]);
  }
}

template <typename acc>
struct ChannelWeights {
  std::vector<acc> w;
  std::vector<int64_t> forward_offset;   // input index of tap t for output 0
  std::vector<int64_t> backward_offset;  // masked dL/dz index feeding input 0 through tap t
};

template <typename scalar_t, typename acc>
inline ChannelWeights<acc> channel_weights(const scalar_t* w, const Geometry& g) {
  ChannelWeights<acc> cw{std::vector<acc>(g.taps), std::vector<int64_t>(g.taps),
                         std::vector<int64_t>(g.taps)};
  for (int t = 0; t < g.taps; ++t) {
    cw.w[t] = static_cast<acc>(w[t]);
    cw.forward_offset[t] = g.tap_offset(t);
    // Input q gets dL/dz of output q - (tap_offset(t) - margin); masked dL/dz is stored
    // with `margin` leading zeros, so that index is q + 2*margin - tap_offset(t) - margin.
    cw.backward_offset[t] = 2 * g.margin - g.tap_offset(t);
  }
  return cw;
}

// One item of the forward: channel c, images b0 .. b0 + nb - 1.
template <typename scalar_t>
FR_CPU_MULTIVERSION void forward_item(const scalar_t* x, const scalar_t* weight, scalar_t bias,
                                      scalar_t* y, int64_t c, int64_t b0, int64_t nb,
                                      const Masks<typename cpu_acc<scalar_t>::type>& masks,
                                      const Geometry& g,
                                      Scratch<typename cpu_acc<scalar_t>::type>& s) {
  using acc = typename cpu_acc<scalar_t>::type;
  const auto cw = channel_weights<scalar_t, acc>(weight + c * g.taps, g);
  const int64_t len = masks.in_len, out_len = g.out_len(nb);
  load_block(x, g, c, b0, nb, g.margin, len, s.x);
  apply_masks(s.x.data(), masks.in.data(), masks.in_len, g.k, len, s.x_masked);
  s.out.resize(masks.out_len);
  const acc* __restrict__ xf = s.x.data() + g.margin;
  for (int64_t i0 = 0; i0 < out_len; i0 += kChunk) {
    acc z[kChunk];
    conv_chunk(s.x_masked.data(), len, cw.w.data(), g, cw.forward_offset.data(), i0, static_cast<acc>(bias), z);
    acc* __restrict__ y_out = s.out.data() + i0;
    for (int64_t l = 0; l < kChunk; ++l) y_out[l] = sparta::forward<acc, Exp>(xf[i0 + l], z[l]);
  }
  store_block(s.out.data(), g, c, b0, nb, y);
}

// One item of the backward: writes dL/dx of its planes and the item's sums of dL/dw (taps)
// and dL/db (last) into `partial`.
template <typename scalar_t>
FR_CPU_MULTIVERSION void backward_item(const scalar_t* grad_y, const scalar_t* x,
                                       const scalar_t* weight, scalar_t bias, scalar_t* grad_x,
                                       typename cpu_acc<scalar_t>::type* partial, int64_t c,
                                       int64_t b0, int64_t nb,
                                       const Masks<typename cpu_acc<scalar_t>::type>& masks,
                                       const Geometry& g,
                                       Scratch<typename cpu_acc<scalar_t>::type>& s) {
  using acc = typename cpu_acc<scalar_t>::type;
  const auto cw = channel_weights<scalar_t, acc>(weight + c * g.taps, g);
  const int64_t len = masks.in_len, out_len = g.out_len(nb), full_out = masks.out_len;
  load_block(x, g, c, b0, nb, g.margin, len, s.x);
  load_block(grad_y, g, c, b0, nb, 0, full_out, s.grad_y);
  apply_masks(s.x.data(), masks.in.data(), masks.in_len, g.k, len, s.x_masked);
  const acc* __restrict__ xf = s.x.data() + g.margin;
  const acc* __restrict__ gy = s.grad_y.data();
  s.grad_x.resize(full_out);
  s.out.resize(full_out);
  acc* __restrict__ gx = s.grad_x.data();  // direct part of dL/dx, then all of it
  acc* __restrict__ gz = s.out.data();     // dL/dz
  // Pass 1: dL/dz and the direct dL/dx, chunk by chunk, with the weight/bias sums.
  std::vector<cpu::Lanes<acc>> sums(g.taps + 1);
  for (int64_t i0 = 0; i0 < out_len; i0 += kChunk) {
    acc z[kChunk];
    conv_chunk(s.x_masked.data(), len, cw.w.data(), g, cw.forward_offset.data(), i0, static_cast<acc>(bias), z);
    for (int64_t l = 0; l < kChunk; ++l) {
      const auto d = sparta::backward<acc, Exp>(xf[i0 + l], z[l], gy[i0 + l]);
      gx[i0 + l] = d.dx;
      gz[i0 + l] = d.dz;
    }
    sums[g.taps].add(gz + i0, kChunk);
    for (int t = 0; t < g.taps; ++t)
      sums[t].add_dot(gz + i0,
                      s.x_masked.data() + g.tap_column(t) * len + cw.forward_offset[t] + i0, kChunk);
  }
  for (int t = 0; t <= g.taps; ++t) partial[t] = sums[t].total();
  // Pass 2: the transposed conv as a gather from dL/dz masked per column (stored after
  // `margin` zeros so that every tap's read stays in the buffer).
  const int64_t gz_len = full_out + 2 * g.margin + kChunk;
  s.grad_z_masked.assign(g.k * gz_len, acc(0));
  for (int j = 0; j < g.k; ++j) {
    const acc* __restrict__ m = masks.output(j);
    acc* __restrict__ dst = s.grad_z_masked.data() + j * gz_len + g.margin;
    for (int64_t i = 0; i < out_len; ++i) dst[i] = gz[i] * m[i];
  }
  for (int64_t i0 = 0; i0 < out_len; i0 += kChunk) {
    acc conv[kChunk];
    conv_chunk(s.grad_z_masked.data(), gz_len, cw.w.data(), g, cw.backward_offset.data(), i0, acc(0), conv);
    for (int64_t l = 0; l < kChunk; ++l) gx[i0 + l] += conv[l];
  }
  store_block(gx, g, c, b0, nb, grad_x);
}

// Runs f(c, b0, nb, item) over all (channel, image block) items in parallel.
template <typename F>
void for_each_item(const Geometry& g, F&& f) {
  at::parallel_for(0, g.C * g.blocks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c = item / g.blocks();
      const int64_t b0 = (item % g.blocks()) * g.images_per_item;
      f(c, b0, std::min(g.images_per_item, g.B - b0), item);
    }
  });
}

at::Tensor sparta_cpu(const at::Tensor& x_, const at::Tensor& weight_, const at::Tensor& bias_) {
  check_sparta_args(x_, weight_, bias_);
  const at::Tensor x = x_.contiguous(), weight = weight_.contiguous(), bias = bias_.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const Geometry g(x, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_cpu", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const Masks<acc> masks(g);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    for_each_item(g, [&](int64_t c, int64_t b0, int64_t nb, int64_t) {
      thread_local Scratch<acc> scratch;
      forward_item<scalar_t>(xp, wp, bp[c], yp, c, b0, nb, masks, g, scratch);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparta_backward_cpu(const at::Tensor& grad_y_,
                                                                   const at::Tensor& x_,
                                                                   const at::Tensor& weight_,
                                                                   const at::Tensor& bias_) {
  check_sparta_backward_args(grad_y_, x_, weight_, bias_);
  const at::Tensor grad_y = grad_y_.contiguous(), x = x_.contiguous();
  const at::Tensor weight = weight_.contiguous(), bias = bias_.contiguous();
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  at::Tensor grad_b = at::empty_like(bias, at::MemoryFormat::Contiguous);
  const Geometry g(x, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_backward_cpu", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const Masks<acc> masks(g);
    const scalar_t* gyp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    // partial[item][t]: the item's sum for tap t (t = taps: the bias).
    std::vector<acc> partial(g.C * g.blocks() * (g.taps + 1), acc(0));
    if (x.numel() > 0) {
      for_each_item(g, [&](int64_t c, int64_t b0, int64_t nb, int64_t item) {
        thread_local Scratch<acc> scratch;
        backward_item<scalar_t>(gyp, xp, wp, bp[c], gxp, partial.data() + item * (g.taps + 1), c,
                                b0, nb, masks, g, scratch);
      });
    }
    scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = grad_b.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < g.C; ++c)
      for (int t = 0; t <= g.taps; ++t) {
        acc total = acc(0);
        for (int64_t blk = 0; blk < g.blocks(); ++blk)
          total += partial[(c * g.blocks() + blk) * (g.taps + 1) + t];
        (t < g.taps ? gwp[c * g.taps + t] : gbp[c]) = static_cast<scalar_t>(total);
      }
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("sparta", &sparta_cpu);
  m.impl("_sparta_backward", &sparta_backward_cpu);
}

}  // namespace fastrobust
