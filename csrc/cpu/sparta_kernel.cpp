// Sparta CPU backend.
//
// Flat formulation. The planes of one channel for a block of images sit back to back in one
// zero-initialised buffer, each plane followed by R zero rows (R = k/2), after a leading
// margin of R rows and R pixels:
//     [margin][plane b0][R zero rows][plane b0+1][R zero rows] ...
// Every tap of the depthwise conv is then one loop over the whole block at a fixed offset
// (dh * row_stride + dw), whatever the plane size (a 4x4 plane alone would give loops of 16);
// a read above or below a plane lands in the zero rows. A read past a row's end or before
// its start must count as zero too; two ways, chosen by the row width:
//   - wide rows get R zero columns each (row stride W + R), so such reads land in zeros;
//   - narrow rows (where R extra columns would be much padding) keep stride W, and the
//     wrapped reads are removed by column masks: k masked copies of x for the conv and the
//     weight gradient, of dL/dz for the transposed conv.
// Outputs computed at padding positions are dropped. Reads of padding must never multiply:
// 0 * NaN is NaN, so a NaN or inf next to the padding would reach other images and other rows'
// ends. Masked copies therefore select (mask ? x : 0), and dL/dz is forced to 0 at padding
// positions (where the conv of a non-finite neighbour can make the gate NaN) before it feeds
// the weight gradient and the transposed conv. Outputs are computed a chunk at a time with all taps
// accumulated in vector registers; the per-element maths comes from csrc/kernels/sparta.h,
// the same functions the CUDA kernels call (with the vectorisable PolyExp).
//
// Planes of up to 64 values that are whole vectors skip this layout (sparta_vector_planes.h).
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
#include "sparta_vector_planes.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using Exp = math::PolyExp;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

constexpr int64_t kBlockElems = 2048;  // output positions per work item, roughly (L1/L2-sized)

// Outputs are computed kChunk at a time; buffers are sized in whole chunks so that the last
// chunk may read and write past the block's end.
constexpr int64_t kChunk = 64;

// Rows at least this wide get zero columns; narrower ones use column masks.
constexpr int64_t kPadColumnsMinWidth = 16;

struct Geometry {
  int64_t B, C, H, W, n;  // n = H * W
  int k, r, taps;         // r = k / 2, taps = k * k
  bool masked;            // column masks (narrow rows) instead of zero columns
  int64_t row;            // row stride in a block buffer: W, or W + r with zero columns
  int64_t stride;         // plane-to-plane distance: (H + r) * row
  int64_t margin;         // leading zeros: r rows and r pixels
  int64_t images_per_item;

  Geometry(const at::Tensor& x, const at::Tensor& weight)
      : B(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), n(H * W),
        k(static_cast<int>(weight.size(2))), r(k / 2), taps(k * k),
        masked(r > 0 && W < kPadColumnsMinWidth), row(masked ? W : W + r),
        stride((H + r) * row), margin(r * row + r) {
    // As many images as fit kBlockElems, then evened out over the blocks (32 images of 8x8
    // make blocks of 16 + 16, not 28 + 4).
    const int64_t fit = std::clamp<int64_t>(kBlockElems / std::max<int64_t>(stride, 1), 1,
                                            std::max<int64_t>(B, 1));
    const int64_t nblocks = (std::max<int64_t>(B, 1) + fit - 1) / fit;
    images_per_item = (std::max<int64_t>(B, 1) + nblocks - 1) / nblocks;
  }
  int64_t blocks() const { return (B + images_per_item - 1) / images_per_item; }
  // Output positions of a block of nb images, in whole chunks.
  int64_t out_len(int64_t nb) const { return (nb * stride + kChunk - 1) / kChunk * kChunk; }
  // Length of a buffer that holds the block with its leading margin and room to read past.
  int64_t buf_len(int64_t nb) const { return out_len(nb) + 2 * margin; }
  // Output position i reads tap t's input at buffer index i + tap_offset(t) (x buffers start
  // with the margin); the transposed conv reads dL/dz of output q + margin - tap_offset(t)
  // for input position q, at index q + 2*margin - tap_offset(t) of a margined dL/dz buffer.
  int64_t tap_offset(int t) const { return margin + (t / k - r) * row + (t % k - r); }
};

// A channel's weights in the accumulation type, with each tap's read offset for the conv
// and for the transposed conv.
template <typename acc>
struct ChannelTaps {
  std::vector<acc> w;
  std::vector<int64_t> forward_offset, backward_offset;
};

// Per-thread buffers, reused across items (an item of a 4x4 map is a few hundred outputs:
// fresh allocations per item would show).
template <typename acc>
struct Scratch {
  std::vector<acc> x, grad_y, out, grad_x, masked;
  std::vector<const acc*> srcs;
  ChannelTaps<acc> taps;
};

// Column masks of the masked layout, for a full block (a shorter last block uses a prefix),
// each buf_len long and indexed like a margined buffer (position i at margin + i):
//   in[j]:  the input there may feed an output through column offset j - r;
//   out[j]: the output there may read through column offset j - r.
// Both are 0 at padding positions. `pixel` (both layouts, indexed like an output buffer) is 1
// at the positions of pixels, 0 at padding.
template <typename acc>
struct Masks {
  std::vector<acc> in, out, pixel;
  int64_t len = 0;

  explicit Masks(const Geometry& g) {
    pixel.assign(g.out_len(g.images_per_item), acc(0));
    for (int64_t i = 0; i < g.images_per_item * g.stride; ++i) {
      const int64_t p = i % g.stride;
      pixel[i] = (p / g.row < g.H && p % g.row < g.W) ? acc(1) : acc(0);
    }
    if (!g.masked) return;
    len = g.buf_len(g.images_per_item);
    in.assign(g.k * len, acc(0));
    out.assign(g.k * len, acc(0));
    for (int64_t i = 0; i < g.images_per_item * g.stride; ++i) {
      const int64_t p = i % g.stride, h = p / g.row, col = p % g.row;
      if (h >= g.H || col >= g.W) continue;
      for (int j = 0; j < g.k; ++j) {
        const int64_t dw = j - g.r;
        // Output col reads input col + dw; input col feeds output col - dw.
        out[j * len + g.margin + i] = (col + dw >= 0 && col + dw < g.W) ? acc(1) : acc(0);
        in[j * len + g.margin + i] = (col - dw >= 0 && col - dw < g.W) ? acc(1) : acc(0);
      }
    }
  }
};

// Where each tap reads, for output position 0: `src` (x, or dL/dz for the transposed conv)
// at `offset`, or in the masked layout the copy of `src` masked for the tap's column. The
// masked copies are made in `masked_buf` (len each), all but the centre column's: its mask
// is 1 at every pixel and 0 at padding, where `src` is zero already (x's buffer is zero
// there, dL/dz is forced to zero), so the copy would equal `src`.
template <typename acc>
inline void tap_sources(const acc* src, const std::vector<acc>& masks, int64_t len,
                        const std::vector<int64_t>& offsets, const Geometry& g,
                        std::vector<acc>& masked_buf, std::vector<const acc*>& out) {
  out.resize(g.taps);
  if (g.masked) {
    masked_buf.resize(g.k * len);
    for (int j = 0; j < g.k; ++j) {
      if (j == g.r) continue;
      const acc* __restrict__ m = masks.data() + j * len;
      acc* __restrict__ dst = masked_buf.data() + j * len;
      for (int64_t q = 0; q < len; ++q) dst[q] = m[q] != acc(0) ? src[q] : acc(0);
    }
  }
  for (int t = 0; t < g.taps; ++t) {
    const int j = t % g.k;
    out[t] = (g.masked && j != g.r ? masked_buf.data() + j * len : src) + offsets[t];
  }
}

// Copies a plane between its tensor and its place in a block buffer, converting the type.
// Rows of the masked layout have no zero columns, so the plane is one contiguous run there.
template <typename from_t, typename to_t>
inline void copy_plane(const from_t* src, int64_t src_row, to_t* dst, int64_t dst_row,
                       const Geometry& g) {
  const int64_t rows = g.row == g.W ? 1 : g.H, cols = g.row == g.W ? g.n : g.W;
  for (int64_t h = 0; h < rows; ++h) {
    const from_t* __restrict__ in = src + h * src_row;
    to_t* __restrict__ out = dst + h * dst_row;
    for (int64_t w = 0; w < cols; ++w) out[w] = static_cast<to_t>(in[w]);
  }
}

// Zeroes buf[begin, end).
template <typename acc>
inline void zero_range(std::vector<acc>& buf, int64_t begin, int64_t end) {
  if (end > begin) std::fill(buf.begin() + begin, buf.begin() + end, acc(0));
}

// The block's planes of x (or grad_y) in block layout, zeros elsewhere; `first` is the
// buffer index of the first pixel (margin for a margined buffer, 0 for an output one).
// Without zero columns a plane is one run, and only the gaps between runs are zeroed (the
// buffer is not written twice).
template <typename scalar_t, typename acc>
inline void load_block(const scalar_t* src, const Geometry& g, int64_t c, int64_t b0, int64_t nb,
                       int64_t first, int64_t len, std::vector<acc>& buf) {
  if (g.row == g.W) {
    buf.resize(len);
    zero_range(buf, 0, first);
    for (int64_t b = 0; b < nb; ++b)
      zero_range(buf, first + b * g.stride + g.n, first + (b + 1) * g.stride);
    zero_range(buf, first + nb * g.stride, len);
  } else {
    buf.assign(len, acc(0));
  }
  for (int64_t b = 0; b < nb; ++b)
    copy_plane(src + ((b0 + b) * g.C + c) * g.n, g.W, buf.data() + first + b * g.stride, g.row, g);
}

template <typename scalar_t, typename acc>
inline void store_block(const acc* block, const Geometry& g, int64_t c, int64_t b0, int64_t nb,
                        scalar_t* dst) {
  for (int64_t b = 0; b < nb; ++b)
    copy_plane(block + b * g.stride, g.row, dst + ((b0 + b) * g.C + c) * g.n, g.W, g);
}

// out[l] = init + sum over taps of w[t] * srcs[t][i0 + l], l < kChunk. Written with GCC
// vector types so that the chunk stays in registers across the taps (as plain loops, GCC
// interchanges them and the tap loop, now innermost, runs scalar).
template <typename acc>
inline void conv_chunk(const acc* const* srcs, const acc* w, int taps, int64_t i0, acc init,
                       acc* out) {
  typedef acc Vec __attribute__((vector_size(64)));
  constexpr int kLanesPerVec = 64 / sizeof(acc);
  constexpr int kVecs = kChunk / kLanesPerVec;
  Vec sum[kVecs];
  for (int v = 0; v < kVecs; ++v) sum[v] = Vec{} + init;
  for (int t = 0; t < taps; ++t) {
    const acc wt = w[t];
    const acc* p = srcs[t] + i0;
    for (int v = 0; v < kVecs; ++v) {
      Vec x;
      std::memcpy(&x, p + v * kLanesPerVec, sizeof(Vec));  // unaligned load
      sum[v] += wt * x;
    }
  }
  std::memcpy(out, sum, sizeof(sum));
}

template <typename scalar_t, typename acc>
inline void channel_taps(const scalar_t* w, const Geometry& g, ChannelTaps<acc>& ct) {
  ct.w.resize(g.taps);
  ct.forward_offset.resize(g.taps);
  ct.backward_offset.resize(g.taps);
  for (int t = 0; t < g.taps; ++t) {
    ct.w[t] = static_cast<acc>(w[t]);
    ct.forward_offset[t] = g.tap_offset(t);
    ct.backward_offset[t] = 2 * g.margin - g.tap_offset(t);
  }
}

// What both passes start an item with: the channel's taps (s.taps), the item's x planes in
// block layout (s.x), and where each tap of the conv reads from (s.srcs).
template <typename scalar_t, typename acc>
inline void load_item(const scalar_t* x, const scalar_t* weight, int64_t c, int64_t b0,
                      int64_t nb, const Masks<acc>& masks, const Geometry& g, Scratch<acc>& s) {
  channel_taps<scalar_t, acc>(weight + c * g.taps, g, s.taps);
  load_block(x, g, c, b0, nb, g.margin, g.buf_len(nb), s.x);
  tap_sources(s.x.data(), masks.in, masks.len, s.taps.forward_offset, g, s.masked, s.srcs);
}

// One item of the forward: channel c, images b0 .. b0 + nb - 1.
template <typename scalar_t>
FR_CPU_MULTIVERSION void forward_item(const scalar_t* x, const scalar_t* weight, scalar_t bias,
                                      scalar_t* y, int64_t c, int64_t b0, int64_t nb,
                                      const Masks<typename cpu_acc<scalar_t>::type>& masks,
                                      const Geometry& g,
                                      Scratch<typename cpu_acc<scalar_t>::type>& s) {
  using acc = typename cpu_acc<scalar_t>::type;
  load_item(x, weight, c, b0, nb, masks, g, s);
  const auto& ct = s.taps;
  const auto& srcs = s.srcs;
  const int64_t out_len = g.out_len(nb);
  s.out.resize(out_len);
  const acc* __restrict__ xf = s.x.data() + g.margin;
  for (int64_t i0 = 0; i0 < out_len; i0 += kChunk) {
    acc z[kChunk];
    conv_chunk(srcs.data(), ct.w.data(), g.taps, i0, static_cast<acc>(bias), z);
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
  load_item(x, weight, c, b0, nb, masks, g, s);
  const auto& ct = s.taps;
  auto& srcs = s.srcs;
  const int64_t out_len = g.out_len(nb), len = g.buf_len(nb);
  load_block(grad_y, g, c, b0, nb, 0, out_len, s.grad_y);
  // dL/dz goes into a margined buffer (zeros around), ready for the transposed conv; pass 1
  // writes all of it but the margins.
  s.out.resize(len);
  zero_range(s.out, 0, g.margin);
  zero_range(s.out, g.margin + out_len, len);
  s.grad_x.resize(out_len);
  const acc* __restrict__ xf = s.x.data() + g.margin;
  const acc* __restrict__ gy = s.grad_y.data();
  const acc* __restrict__ pixel = masks.pixel.data();
  acc* __restrict__ gz = s.out.data() + g.margin;
  acc* __restrict__ gx = s.grad_x.data();  // direct part of dL/dx, then all of it
  // Pass 1: dL/dz and the direct dL/dx, chunk by chunk, with the weight/bias sums.
  std::vector<cpu::Lanes<acc>> sums(g.taps + 1);
  for (int64_t i0 = 0; i0 < out_len; i0 += kChunk) {
    acc z[kChunk];
    conv_chunk(srcs.data(), ct.w.data(), g.taps, i0, static_cast<acc>(bias), z);
    for (int64_t l = 0; l < kChunk; ++l) {
      const auto d = sparta::backward<acc, Exp>(xf[i0 + l], z[l], gy[i0 + l]);
      gx[i0 + l] = d.dx;
      gz[i0 + l] = pixel[i0 + l] != acc(0) ? d.dz : acc(0);
    }
    sums[g.taps].add(gz + i0, kChunk);
    for (int t = 0; t < g.taps; ++t) sums[t].add_dot(gz + i0, srcs[t] + i0, kChunk);
  }
  for (int t = 0; t <= g.taps; ++t) partial[t] = sums[t].total();
  // Pass 2: the transposed conv, a gather from the margined dL/dz.
  tap_sources(s.out.data(), masks.out, masks.len, ct.backward_offset, g, s.masked, srcs);
  for (int64_t i0 = 0; i0 < out_len; i0 += kChunk) {
    acc conv[kChunk];
    conv_chunk(srcs.data(), ct.w.data(), g.taps, i0, acc(0), conv);
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

#if FR_SPARTA_VECTOR_PLANES
// Where the planes go in vectors (sparta_vector_planes.h): runs f(vectors, layout, c, b0, nb,
// item) over all items, with the plane's vector count as a compile-time constant, and returns
// true; elsewhere returns false and runs nothing.
template <typename acc, typename F>
bool for_each_item_in_vectors(const Geometry& g, F&& f) {
  namespace vp = sparta_vector_planes;
  if (!vp::Layout::supported(g.H, g.W, g.k, std::is_same_v<acc, float>)) return false;
  const vp::Layout layout(g.B, g.C, g.H, g.W, g.k);
  vp::with_vectors(layout, [&](auto vectors) {
    for_each_item(g, [&](int64_t c, int64_t b0, int64_t nb, int64_t item) {
      f(vectors, layout, c, b0, nb, item);
    });
  });
  return true;
}
#endif

at::Tensor sparta_cpu(const at::Tensor& x_, const at::Tensor& weight_, const at::Tensor& bias_) {
  check_sparta_args(x_, weight_, bias_);
  const at::Tensor x = x_.contiguous(), weight = weight_.contiguous(), bias = bias_.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const Geometry g(x, weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_cpu", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
#if FR_SPARTA_VECTOR_PLANES
    const bool in_vectors = for_each_item_in_vectors<acc>(
        g, [&](auto vectors, const auto& layout, int64_t c, int64_t b0, int64_t nb, int64_t) {
          sparta_vector_planes::forward_item<scalar_t, decltype(vectors)::value>(xp, wp, bp[c], yp, c,
                                                                              b0, nb, layout);
        });
    if (in_vectors) return;
#endif
    const Masks<acc> masks(g);
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
    const scalar_t* gyp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    // partial[item][t]: the item's sum for tap t (t = taps: the bias).
    std::vector<acc> partial(g.C * g.blocks() * (g.taps + 1), acc(0));
    bool done = x.numel() == 0;
#if FR_SPARTA_VECTOR_PLANES
    if (!done)
      done = for_each_item_in_vectors<acc>(
          g, [&](auto vectors, const auto& layout, int64_t c, int64_t b0, int64_t nb, int64_t item) {
            sparta_vector_planes::backward_item<scalar_t, acc, decltype(vectors)::value>(
                gyp, xp, wp, bp[c], gxp, partial.data() + item * (g.taps + 1), c, b0, nb, layout);
          });
#endif
    if (!done) {
      const Masks<acc> masks(g);
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
