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

template <typename scalar_t>
FR_CPU_MULTIVERSION void scale_rows(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                    const typename cpu_acc<scalar_t>::type* mask, int64_t channels,
                                    int64_t spatial) {
  using acc = typename cpu_acc<scalar_t>::type;
  for (int64_t c = 0; c < channels; ++c) {
    const acc m = mask[c];
    for (int64_t i = 0; i < spatial; ++i) out[c * spatial + i] = acc(in[c * spatial + i]) * m;
  }
}

// grad_feat rows = grad_out rows * m_c (+ add[c] when add is given); d[c] = sum_hw grad_out *
// feat, kept in kDotLanes partial sums so that the loop vectorises without reassociating a
// single sum.
constexpr int kDotLanes = 8;

template <typename scalar_t>
FR_CPU_MULTIVERSION void backward_rows(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ feat,
                                       scalar_t* __restrict__ grad_feat,
                                       const typename cpu_acc<scalar_t>::type* mask,
                                       const typename cpu_acc<scalar_t>::type* add,
                                       typename cpu_acc<scalar_t>::type* d, int64_t channels, int64_t spatial) {
  using acc = typename cpu_acc<scalar_t>::type;
  for (int64_t c = 0; c < channels; ++c) {
    const scalar_t* g = grad_out + c * spatial;
    const scalar_t* f = feat + c * spatial;
    scalar_t* out = grad_feat + c * spatial;
    const acc m = mask[c], a = add != nullptr ? add[c] : acc(0);
    acc lane[kDotLanes] = {};
    int64_t i = 0;
    for (; i + kDotLanes <= spatial; i += kDotLanes)
      for (int l = 0; l < kDotLanes; ++l) {
        const acc gi = g[i + l];
        lane[l] += gi * acc(f[i + l]);
        out[i + l] = gi * m + a;
      }
    acc dot = 0;
    for (; i < spatial; ++i) {
      const acc gi = g[i];
      dot += gi * acc(f[i]);
      out[i] = gi * m + a;
    }
    for (int l = 0; l < kDotLanes; ++l) dot += lane[l];
    d[c] = dot;
  }
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
        for (int64_t b = b0; b < b1; ++b) {
          softmax_row(a.relevance + b * a.channels, a.channels, a.temperature, prob.data());
          for (int64_t c = 0; c < a.channels; ++c) mask[c] = a.scale * prob[c];
          if (a.grad_pooled != nullptr)
            for (int64_t c = 0; c < a.channels; ++c) add[c] = a.grad_pooled[b * a.channels + c] / acc(a.spatial);
          const int64_t offset = b * a.channels * a.spatial;
          backward_rows(a.grad_out + offset, a.feat + offset, a.out + offset, mask.data(),
                        a.grad_pooled != nullptr ? add.data() : nullptr, d.data(), a.channels, a.spatial);
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
