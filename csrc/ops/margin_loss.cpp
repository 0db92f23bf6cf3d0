#include "margin_loss.h"

#include <torch/library.h>

#include <cmath>
#include <string>

#include "../common/checks.h"

namespace fastrobust {
namespace margin {
namespace {

Kind parse_kind(c10::string_view kind) {
  if (kind == "cw") return Kind::CW;
  if (kind == "dlr") return Kind::DLR;
  FR_CHECK(false, "kind must be \"cw\" or \"dlr\", got \"", std::string(kind), "\"");
  return Kind::CW;
}

at::Tensor class_vector(const at::Tensor& t, const char* name, const at::Tensor& logits, ValueChecks checks) {
  FR_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  FR_CHECK_SHAPE(t, name, logits.size(0));
  FR_CHECK_SAME_DEVICE(t, name, logits, "logits");
  if (checks == ValueChecks::kHost && t.device().is_cpu() && t.numel() > 0) {
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    FR_CHECK(lo >= 0 && hi < logits.size(1), name, " must be class indices in [0, ", logits.size(1),
             "), got values in [", lo, ", ", hi, "]");
  }
  return t.contiguous();
}

}  // namespace

Prepared prepare(const at::Tensor& logits, const at::Tensor& labels,
                 const std::optional<at::Tensor>& targets, c10::string_view kind, double kappa,
                 ValueChecks checks) {
  FR_CHECK_DIM(logits, "logits", 2);
  FR_CHECK_FLOATING(logits, "logits");
  Prepared p;
  p.kind = parse_kind(kind);
  const bool targeted = targets.has_value();
  const int64_t need = p.kind == Kind::CW ? 2 : (targeted ? 4 : 3);
  FR_CHECK(logits.size(1) >= need, std::string(kind), targeted ? " (targeted)" : "",
           " loss needs at least ", need, " classes, got logits of shape ", logits.sizes());
  FR_CHECK(!std::isnan(kappa), "kappa must not be NaN");
  FR_CHECK(logits.size(1) <= INT32_MAX, "logits: at most 2^31 - 1 classes are supported");
  p.logits = logits.contiguous();
  p.labels = class_vector(labels, "labels", logits, checks);
  if (targeted) p.targets = class_vector(*targets, "targets", logits, checks);
  p.kappa = kappa;
  return p;
}

Prepared prepare_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                          const at::Tensor& labels, const std::optional<at::Tensor>& targets,
                          c10::string_view kind, double kappa, ValueChecks checks) {
  Prepared p = prepare(logits, labels, targets, kind, kappa, checks);
  FR_CHECK_SHAPE(grad_loss, "grad_loss", logits.size(0));
  FR_CHECK_SAME_DTYPE(grad_loss, "grad_loss", logits, "logits");
  FR_CHECK_SAME_DEVICE(grad_loss, "grad_loss", logits, "logits");
  p.grad_loss = grad_loss.contiguous();
  return p;
}

}  // namespace margin

TORCH_LIBRARY_FRAGMENT(fastrobust, m) {
  m.def(kMarginLossSchema);
  m.def(kMarginLossBackwardSchema);
}

}  // namespace fastrobust
