#include "cifs.h"

#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"

namespace fastrobust {
namespace cifs {

at::ScalarType acc_dtype(const at::Tensor& feat) {
  return feat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Prepared prepare(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale) {
  FR_CHECK_DIM(feat, "feat", 4);
  FR_CHECK_FLOATING(feat, "feat");
  FR_CHECK_DIM(relevance, "relevance", 2);
  FR_CHECK_FLOATING(relevance, "relevance");
  FR_CHECK_SAME_DEVICE(relevance, "relevance", feat, "feat");
  FR_CHECK(relevance.size(0) == feat.size(0) && relevance.size(1) == feat.size(1),
           "relevance must have shape (B, C) = (", feat.size(0), ", ", feat.size(1), ") for feat of shape ",
           feat.sizes(), ", got ", relevance.sizes());
  FR_CHECK(temperature > 0 && std::isfinite(temperature), "temperature must be a positive number, got ",
           temperature);
  FR_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  Prepared p;
  p.feat = feat.contiguous();
  p.relevance_dtype = relevance.scalar_type();
  p.relevance = relevance.to(acc_dtype(feat)).contiguous();
  p.batch = feat.size(0);
  p.channels = feat.size(1);
  p.spatial = feat.size(2) * feat.size(3);
  p.temperature = temperature;
  p.scale = scale;
  return p;
}

Prepared prepare_backward(const at::Tensor& grad_out, const at::Tensor& feat, const at::Tensor& relevance,
                          double temperature, double scale, const std::optional<at::Tensor>& grad_pooled) {
  Prepared p = prepare(feat, relevance, temperature, scale);
  FR_CHECK(grad_out.sizes() == feat.sizes(), "grad_out must have the shape of feat (", feat.sizes(), "), got ",
           grad_out.sizes());
  FR_CHECK_SAME_DTYPE(grad_out, "grad_out", feat, "feat");
  FR_CHECK_SAME_DEVICE(grad_out, "grad_out", feat, "feat");
  p.grad_out = grad_out.contiguous();
  if (grad_pooled.has_value() && grad_pooled->defined()) {
    const at::Tensor& gp = *grad_pooled;
    FR_CHECK_FLOATING(gp, "grad_pooled");
    FR_CHECK_SAME_DEVICE(gp, "grad_pooled", feat, "feat");
    FR_CHECK(gp.dim() == 2 && gp.size(0) == feat.size(0) && gp.size(1) == feat.size(1),
             "grad_pooled must have shape (B, C) = (", feat.size(0), ", ", feat.size(1), ") for feat of shape ",
             feat.sizes(), ", got ", gp.sizes());
    p.grad_pooled = gp.to(acc_dtype(feat)).contiguous();
  }
  return p;
}

}  // namespace cifs

TORCH_LIBRARY_FRAGMENT(fastrobust, m) {
  m.def(kCifsReweightSchema);
  m.def(kCifsReweightBackwardSchema);
  m.def(kCifsPoolSchema);
}

}  // namespace fastrobust
