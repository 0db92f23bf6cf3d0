#pragma once
// CIFS's fused reweighting cifs_reweight(feat, relevance, T, scale) = feat * scale *
// softmax(relevance / T) over channels: schemas, checks and the preparation every backend
// runs first.
#include <ATen/core/Tensor.h>

#include <optional>

#include "../kernels/cifs.h"

namespace fastrobust {

constexpr const char* kCifsReweightSchema =
    "cifs_reweight(Tensor feat, Tensor relevance, float temperature, float scale) -> Tensor";
constexpr const char* kCifsReweightBackwardSchema =
    "_cifs_reweight_backward(Tensor grad_out, Tensor feat, Tensor relevance, float temperature, "
    "float scale, Tensor? grad_pooled=None) -> (Tensor, Tensor)";
// The (B, C) spatial mean of feat (B, C, H, W), what the layer's probe reads: a CPU kernel only
// (on the CPU, ATen's reduction over rows of H W values took 45-65 us at B32 C512 4x4, several
// times its memory traffic; on a GPU torch's reduction is the right tool). Not differentiable:
// the layer's node adds the pooling's gradient inside _cifs_reweight_backward.
constexpr const char* kCifsPoolSchema = "_cifs_pool(Tensor feat) -> Tensor";

namespace cifs {

// relevance converted to the accumulation dtype (it is only B x C values); the backward's
// grad_relevance is computed in it and converted back to relevance_dtype.
struct Prepared {
  at::Tensor feat, relevance, grad_out;  // contiguous; grad_out undefined in the forward
  at::Tensor grad_pooled;                // (B, C) in the accumulation dtype, or undefined
  at::ScalarType relevance_dtype = at::kFloat;
  int64_t batch = 0, channels = 0, spatial = 0;
  double temperature = 1, scale = 2;
};

// feat (B, C, H, W) floating, any layout; relevance (B, C) floating (any dtype) on feat's
// device; temperature > 0.
Prepared prepare(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale);
// The accumulation dtype of feat: float64 for float64, float32 otherwise.
at::ScalarType acc_dtype(const at::Tensor& feat);
// prepare, plus grad_out with feat's shape, dtype and device, and the optional gradient of
// feat's spatial mean, (B, C) floating on feat's device: the backward adds
// grad_pooled[b, c] / (H W) to grad_feat[b, c] (the pooling's backward, fused).
Prepared prepare_backward(const at::Tensor& grad_out, const at::Tensor& feat, const at::Tensor& relevance,
                          double temperature, double scale, const std::optional<at::Tensor>& grad_pooled);

template <typename scalar_t, typename acc>
ReweightPtrs<scalar_t, acc> ptrs(const Prepared& p, const at::Tensor& out, const at::Tensor& grad_relevance,
                                 const at::Tensor& channel_dots) {
  ReweightPtrs<scalar_t, acc> r;
  r.feat = p.feat.const_data_ptr<scalar_t>();
  r.relevance = p.relevance.const_data_ptr<acc>();
  r.grad_out = p.grad_out.defined() ? p.grad_out.const_data_ptr<scalar_t>() : nullptr;
  r.out = out.mutable_data_ptr<scalar_t>();
  r.grad_relevance = grad_relevance.defined() ? grad_relevance.mutable_data_ptr<acc>() : nullptr;
  r.channel_dots = channel_dots.defined() ? channel_dots.mutable_data_ptr<acc>() : nullptr;
  r.grad_pooled = p.grad_pooled.defined() ? p.grad_pooled.const_data_ptr<acc>() : nullptr;
  r.batch = p.batch;
  r.channels = p.channels;
  r.spatial = p.spatial;
  r.temperature = static_cast<acc>(p.temperature);
  r.scale = static_cast<acc>(p.scale);
  return r;
}

}  // namespace cifs
}  // namespace fastrobust
