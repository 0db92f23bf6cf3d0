// CIFS reweighting, CPU backend: one sample per task (at::parallel_for over the batch); the
// channel mask is computed once per sample into a small buffer, then each channel's
// spatial row is scaled (forward) or scaled and dotted with the feature (backward).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../kernels/cifs.h"
#include "../ops/cifs.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using namespace cifs;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

// p = softmax(r / T) of one sample's relevance row, into p[0 .. C).
template <typename acc>
FR_CPU_MULTIVERSION void softmax_row(const acc* __restrict__ r, int64_t channels, acc temperature,
                                     acc* __restrict__ p) {
  acc max_z = -std::numeric_limits<acc>::infinity();
  for (int64_t c = 0; c < channels; ++c) max_z = std::max(max_z, logit(r[c], temperature));
  for (int64_t c = 0; c < channels; ++c) p[c] = shifted_exp<acc, math::PolyExp>(r[c], temperature, max_z);
  acc sum = 0;
  for (int64_t c = 0; c < channels; ++c) sum += p[c];
  const acc inv_sum = acc(1) / sum;
  for (int64_t c = 0; c < channels; ++c) p[c] *= inv_sum;
}

// The backward converts reduced-precision rows to acc a block of channels at a time
// (cpu::convert, vectorised), computes in acc and converts back: blocks of at most this many
// values (one channel where its row alone is longer), so that the three staging buffers stay
// in L1 (the bfloat16 backward at B32 C512 4x4 took 183-191 us with blocks of 1024 values,
// 203-204 us with 4096, single-threaded on an AMD EPYC).
constexpr int64_t kStagedValues = 1024;

// Buffers of the staged blocks, one set per parallel task.
template <typename acc>
struct Staging {
  std::vector<acc> feat, grad_out, out;
};

template <typename scalar_t>
constexpr bool kStaged = !std::is_same_v<scalar_t, typename cpu_acc<scalar_t>::type>;

// Calls body(c0, c1) over blocks of channels [c0, c1) of at most kStagedValues values (one
// block when nothing is staged).
template <typename scalar_t, typename F>
inline void for_each_channel_block(int64_t channels, int64_t spatial, F&& body) {
  const int64_t block = kStaged<scalar_t> ? std::max<int64_t>(1, kStagedValues / std::max<int64_t>(spatial, 1))
                                          : channels;
  for (int64_t c0 = 0; c0 < channels; c0 += block) body(c0, std::min(channels, c0 + block));
}

// The n values at `rows` as acc: themselves, or their conversion into `buf`.
template <typename scalar_t, typename acc>
inline const acc* rows_as_acc(const scalar_t* rows, int64_t n, std::vector<acc>& buf) {
  if constexpr (kStaged<scalar_t>) {
    buf.resize(n);
    cpu::convert(rows, buf.data(), n);
    return buf.data();
  } else {
    return rows;
  }
}

// Where the n acc results for `rows` go before store_rows: `rows` itself, or `buf`.
template <typename scalar_t, typename acc>
inline acc* rows_out(scalar_t* rows, int64_t n, std::vector<acc>& buf) {
  if constexpr (kStaged<scalar_t>) {
    buf.resize(n);
    return buf.data();
  } else {
    return rows;
  }
}

template <typename scalar_t, typename acc>
inline void store_rows(scalar_t* rows, int64_t n, const std::vector<acc>& buf) {
  if constexpr (kStaged<scalar_t>) cpu::convert(buf.data(), rows, n);
}

// One sample of the forward: out rows = feat rows * mask[c]. One pass; bfloat16 through its
// bits (cpu::bfloat16_bits_to_float and back), which vectorises where c10's conversions do not.
template <typename scalar_t>
FR_CPU_MULTIVERSION void scale_rows(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                    const typename cpu_acc<scalar_t>::type* mask, int64_t channels,
                                    int64_t spatial) {
  using acc = typename cpu_acc<scalar_t>::type;
  for (int64_t c = 0; c < channels; ++c) {
    const acc m = mask[c];
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      const uint16_t* __restrict__ from = reinterpret_cast<const uint16_t*>(in) + c * spatial;
      uint16_t* __restrict__ to = reinterpret_cast<uint16_t*>(out) + c * spatial;
      for (int64_t i = 0; i < spatial; ++i)
        to[i] = cpu::float_to_bfloat16_bits(cpu::bfloat16_bits_to_float(from[i]) * m);
    } else {
      for (int64_t i = 0; i < spatial; ++i) out[c * spatial + i] = acc(in[c * spatial + i]) * m;
    }
  }
}

// grad_feat rows = grad_out rows * m_c (+ add[c] when add is given); d[c] = sum_hw grad_out *
// feat, kept in kDotLanes partial sums so that the loop vectorises without reassociating a
// single sum.
constexpr int kDotLanes = 8;

template <typename acc>
inline void backward_rows_acc(const acc* __restrict__ grad_out, const acc* __restrict__ feat,
                              acc* __restrict__ grad_feat, const acc* mask, const acc* add, acc* d,
                              int64_t channels, int64_t spatial) {
  for (int64_t c = 0; c < channels; ++c) {
    const acc* g = grad_out + c * spatial;
    const acc* f = feat + c * spatial;
    acc* out = grad_feat + c * spatial;
    const acc m = mask[c], a = add != nullptr ? add[c] : acc(0);
    acc lane[kDotLanes] = {};
    int64_t i = 0;
    for (; i + kDotLanes <= spatial; i += kDotLanes)
      for (int l = 0; l < kDotLanes; ++l) {
        const acc gi = g[i + l];
        lane[l] += gi * f[i + l];
        out[i + l] = gi * m + a;
      }
    acc dot = 0;
    for (; i < spatial; ++i) {
      const acc gi = g[i];
      dot += gi * f[i];
      out[i] = gi * m + a;
    }
    for (int l = 0; l < kDotLanes; ++l) dot += lane[l];
    d[c] = dot;
  }
}

// One sample of the backward: grad_feat rows and the channel dots d.
template <typename scalar_t>
FR_CPU_MULTIVERSION void backward_rows(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ feat,
                                       scalar_t* __restrict__ grad_feat,
                                       const typename cpu_acc<scalar_t>::type* mask,
                                       const typename cpu_acc<scalar_t>::type* add,
                                       typename cpu_acc<scalar_t>::type* d, int64_t channels, int64_t spatial,
                                       Staging<typename cpu_acc<scalar_t>::type>& st) {
  for_each_channel_block<scalar_t>(channels, spatial, [&](int64_t c0, int64_t c1) {
    const int64_t first = c0 * spatial, n = (c1 - c0) * spatial;
    const auto* g = rows_as_acc(grad_out + first, n, st.grad_out);
    const auto* f = rows_as_acc(feat + first, n, st.feat);
    auto* o = rows_out(grad_feat + first, n, st.out);
    backward_rows_acc(g, f, o, mask + c0, add != nullptr ? add + c0 : nullptr, d + c0, c1 - c0, spatial);
    store_rows(grad_feat + first, n, st.out);
  });
}

at::Tensor cifs_reweight_cpu(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale) {
  const Prepared p = prepare(feat, relevance, temperature, scale);
  at::Tensor out = at::empty_like(p.feat);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feat.scalar_type(), "cifs_reweight", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto a = ptrs<scalar_t, acc>(p, out, at::Tensor(), at::Tensor());
    at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
      std::vector<acc> mask(a.channels);
      for (int64_t b = b0; b < b1; ++b) {
        softmax_row(a.relevance + b * a.channels, a.channels, a.temperature, mask.data());
        for (acc& m : mask) m *= a.scale;
        const int64_t offset = b * a.channels * a.spatial;
        scale_rows(a.feat + offset, a.out + offset, mask.data(), a.channels, a.spatial);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cifs_reweight_backward_cpu(const at::Tensor& grad_out, const at::Tensor& feat,
                                                              const at::Tensor& relevance, double temperature,
                                                              double scale,
                                                              const std::optional<at::Tensor>& grad_pooled) {
  const Prepared p = prepare_backward(grad_out, feat, relevance, temperature, scale, grad_pooled);
  at::Tensor grad_feat = at::empty_like(p.feat);
  at::Tensor grad_relevance = at::empty_like(p.relevance);
  if (p.batch > 0 && p.channels > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feat.scalar_type(), "cifs_reweight_backward", [&] {
      using acc = typename cpu_acc<scalar_t>::type;
      const auto a = ptrs<scalar_t, acc>(p, grad_feat, grad_relevance, at::Tensor());
      at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
        std::vector<acc> prob(a.channels), mask(a.channels), d(a.channels), add(a.grad_pooled ? a.channels : 0);
        Staging<acc> staging;
        for (int64_t b = b0; b < b1; ++b) {
          softmax_row(a.relevance + b * a.channels, a.channels, a.temperature, prob.data());
          for (int64_t c = 0; c < a.channels; ++c) mask[c] = a.scale * prob[c];
          if (a.grad_pooled != nullptr)
            for (int64_t c = 0; c < a.channels; ++c) add[c] = a.grad_pooled[b * a.channels + c] / acc(a.spatial);
          const int64_t offset = b * a.channels * a.spatial;
          backward_rows(a.grad_out + offset, a.feat + offset, a.out + offset, mask.data(),
                        a.grad_pooled != nullptr ? add.data() : nullptr, d.data(), a.channels, a.spatial, staging);
          acc p_dot_d = 0;
          for (int64_t c = 0; c < a.channels; ++c) p_dot_d += prob[c] * d[c];
          for (int64_t c = 0; c < a.channels; ++c)
            a.grad_relevance[b * a.channels + c] = relevance_grad(prob[c], d[c], p_dot_d, a.scale, a.temperature);
        }
      });
    });
  }
  return {grad_feat, grad_relevance.to(p.relevance_dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("cifs_reweight", &cifs_reweight_cpu);
  m.impl("_cifs_reweight_backward", &cifs_reweight_backward_cpu);
}

}  // namespace fastrobust
