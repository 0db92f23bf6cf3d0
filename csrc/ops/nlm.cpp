#include "nlm.h"

#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"

namespace fastrobust {
namespace nlm {
namespace {

void check_rank(const at::Tensor& t, const char* name) {
  FR_CHECK(t.dim() == 3 || t.dim() == 4, name, " must be a 3-D (B, d, N) or 4-D (B, d, H, W) tensor, got ", t.dim(),
           "-D with shape ", t.sizes());
}

// (B, width, N) with N the product of the position dims (explicit: -1 is ambiguous when B = 0).
at::Tensor flat(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t i = 2; i < t.dim(); ++i) n *= t.size(i);
  return t.reshape({t.size(0), t.size(1), n}).contiguous();
}

}  // namespace

at::ScalarType acc_dtype(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

Prepared prepare(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g, double scale) {
  check_rank(theta, "theta");
  FR_CHECK_FLOATING(theta, "theta");
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{phi, "phi"}, {g, "g"}}) {
    FR_CHECK(t.dim() == theta.dim(), name, " must have the rank of theta (", theta.dim(), "-D), got ", t.dim(),
             "-D with shape ", t.sizes());
    FR_CHECK_SAME_DTYPE(t, name, theta, "theta");
    FR_CHECK_SAME_DEVICE(t, name, theta, "theta");
    FR_CHECK(t.size(0) == theta.size(0), name, " must have the batch size of theta (", theta.size(0), "), got ",
             t.size(0));
    FR_CHECK(t.sizes().slice(2) == theta.sizes().slice(2), name, " must have the positions of theta ",
             theta.sizes().slice(2), ", got ", t.sizes().slice(2));
  }
  FR_CHECK(phi.size(1) == theta.size(1), "phi must have the width d of theta (", theta.size(1), "), got ",
           phi.size(1));
  FR_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  Prepared p;
  p.theta = flat(theta);
  p.phi = flat(phi);
  p.g = flat(g);
  p.batch = theta.size(0);
  p.dim = theta.size(1);
  p.channels = g.size(1);
  p.positions = p.theta.size(2);
  p.scale = scale;
  return p;
}

Prepared prepare_backward(const at::Tensor& grad_y, const at::Tensor& theta, const at::Tensor& phi,
                          const at::Tensor& g, const at::Tensor& y, const at::Tensor& lse, double scale) {
  Prepared p = prepare(theta, phi, g, scale);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{grad_y, "grad_y"}, {y, "y"}}) {
    FR_CHECK(t.sizes() == g.sizes(), name, " must have the shape of g (", g.sizes(), "), got ", t.sizes());
    FR_CHECK_SAME_DTYPE(t, name, g, "g");
    FR_CHECK_SAME_DEVICE(t, name, g, "g");
  }
  FR_CHECK_SHAPE(lse, "lse", p.batch, p.positions);
  FR_CHECK(lse.scalar_type() == acc_dtype(theta), "lse must have dtype ", acc_dtype(theta), ", got ",
           lse.scalar_type());
  FR_CHECK_SAME_DEVICE(lse, "lse", theta, "theta");
  p.grad_y = flat(grad_y);
  p.y = flat(y);
  p.lse = lse.contiguous();
  return p;
}

}  // namespace nlm

TORCH_LIBRARY_FRAGMENT(fastrobust, m) {
  m.def(kNlmGaussianSchema);
  m.def(kNlmGaussianBackwardSchema);
}

}  // namespace fastrobust
