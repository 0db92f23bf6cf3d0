#include "pgd.h"

#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <ATen/Dispatch.h>

#include <limits>
#include <string>

#include "../common/checks.h"

namespace fastrobust {
namespace pgd {
namespace {

at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Norm parse_norm(c10::string_view norm) {
  if (norm == "linf") return Norm::Linf;
  if (norm == "l2") return Norm::L2;
  FR_CHECK(false, "norm must be \"linf\" or \"l2\", got \"", std::string(norm), "\"");
  return Norm::Linf;
}

BestMode parse_mode(c10::string_view mode) {
  if (mode == "loss") return BestMode::Loss;
  if (mode == "first_success") return BestMode::FirstSuccess;
  if (mode == "last_success") return BestMode::LastSuccess;
  FR_CHECK(false, "mode must be \"loss\", \"first_success\" or \"last_success\", got \"",
           std::string(mode), "\"");
  return BestMode::Loss;
}

// x is updated in place: it must be floating, have a batch dim, and keep each row as one
// dense block (contiguous or channels_last), so that a row is `row_size` consecutive elements.
void check_rows_layout(const at::Tensor& x, const char* name) {
  FR_CHECK(x.dim() >= 1, name, " must have a batch dimension (rows are dim 0), got a 0-D tensor");
  FR_CHECK_FLOATING(x, name);
  const int64_t rows = x.size(0);
  const int64_t row_size = rows == 0 ? 0 : x.numel() / rows;
  FR_CHECK(x.numel() == 0 || (x.is_non_overlapping_and_dense() &&
                              (rows == 1 || x.stride(0) == row_size)),
           name, " must be contiguous or channels_last (each row one dense block) to be "
           "updated in place; got sizes ", x.sizes(), " and strides ", x.strides());
}

// t as an x-shaped tensor with x's dtype, device and memory layout (copied only if needed).
at::Tensor like_x(const at::Tensor& t, const char* name, const at::Tensor& x, const char* x_name) {
  FR_CHECK(t.sizes() == x.sizes(), name, " must have the shape of ", x_name, " (", x.sizes(),
           "), got ", t.sizes());
  FR_CHECK_SAME_DTYPE(t, name, x, x_name);
  FR_CHECK_SAME_DEVICE(t, name, x, x_name);
  if (t.strides() == x.strides() || x.numel() == 0) return t;
  at::Tensor copy = at::empty_like(x);
  copy.copy_(t);
  return copy;
}

// A mutated x-shaped tensor other than x: no copy is possible, so it must match x's layout.
void check_same_layout(const at::Tensor& t, const char* name, const at::Tensor& x,
                       const char* x_name) {
  FR_CHECK(t.sizes() == x.sizes(), name, " must have the shape of ", x_name, " (", x.sizes(),
           "), got ", t.sizes());
  FR_CHECK_SAME_DTYPE(t, name, x, x_name);
  FR_CHECK_SAME_DEVICE(t, name, x, x_name);
  FR_CHECK(x.numel() == 0 || t.strides() == x.strides(), name, " is updated in place and must have the strides of ",
           x_name, " (", x.strides(), "), got ", t.strides());
}

// eps / alpha / eta: a floating tensor of shape (), (1,) or (rows,), as a 1-D vector in the
// accumulation dtype on x's device. Its values must be finite and >= 0: checked here for the
// CPU backend, by the kernels (FR_DEVICE_ASSERT) for the CUDA one.
at::Tensor per_row(const at::Tensor& v, const char* name, const at::Tensor& x, ValueChecks checks) {
  FR_CHECK_FLOATING(v, name);
  FR_CHECK_SAME_DEVICE(v, name, x, "x");
  FR_CHECK(v.dim() <= 1 && (v.numel() == 1 || v.numel() == x.size(0)), name,
           " must hold one value or one per row (", x.size(0), "), got shape ", v.sizes());
  at::Tensor rows = v.reshape({-1}).to(acc_dtype(x)).contiguous();
  if (checks == ValueChecks::kHost && rows.device().is_cpu()) {
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "per_row", [&] {
      const scalar_t* values = rows.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < rows.numel(); ++i)
        FR_CHECK(valid_row_param(values[i]), name, " must be finite and >= 0, got ", values[i],
                 rows.numel() > 1 ? " at row " : "", rows.numel() > 1 ? std::to_string(i) : std::string());
    });
  }
  return rows;
}

// x (and x_prev, best_x) are written by the kernels behind autograd's back.
void check_no_grad(const at::Tensor& t, const char* name) {
  FR_CHECK(!t.requires_grad(), name, " is updated in place and must not require grad (pass a detached tensor, "
           "e.g. ", name, ".detach())");
}

at::Tensor row_mask(const at::Tensor& m, const char* name, const at::Tensor& x) {
  FR_CHECK(m.scalar_type() == at::kBool, name, " must be a bool tensor, got ", m.scalar_type());
  FR_CHECK_SAME_DEVICE(m, name, x, "x");
  FR_CHECK_SHAPE(m, name, x.size(0));
  return m.contiguous();
}

void check_box(double lo, double hi) {
  FR_CHECK(lo <= hi, "lo must be <= hi, got lo=", lo, ", hi=", hi);  // also rejects NaN
}

Prepared base(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
              c10::string_view norm, double lo, double hi, ValueChecks checks) {
  check_rows_layout(x, "x");
  check_no_grad(x, "x");
  check_box(lo, hi);
  Prepared p;
  p.x = x;
  p.x0 = like_x(x0, "x0", x, "x");
  p.eps = per_row(eps, "eps", x, checks);
  p.rows = x.size(0);
  p.row_size = p.rows == 0 ? 0 : x.numel() / p.rows;
  p.norm = parse_norm(norm);
  p.lo = lo;
  p.hi = hi;
  return p;
}

}  // namespace

Prepared prepare_step(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                      const at::Tensor& eps, const at::Tensor& alpha,
                      const std::optional<at::Tensor>& active,
                      const std::optional<at::Tensor>& noise, c10::string_view norm, double lo,
                      double hi, bool descent, ValueChecks checks) {
  Prepared p = base(x, x0, eps, norm, lo, hi, checks);
  p.grad = like_x(grad, "grad", x, "x");
  p.alpha = per_row(alpha, "alpha", x, checks);
  if (active.has_value()) p.active = row_mask(*active, "active", x);
  if (noise.has_value()) p.noise = like_x(*noise, "noise", x, "x");
  p.descent = descent;
  return p;
}

Prepared prepare_random_init(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
                             c10::string_view norm, double lo, double hi, int64_t seed,
                             int64_t offset, ValueChecks checks) {
  Prepared p = base(x, x0, eps, norm, lo, hi, checks);
  p.seed = static_cast<uint64_t>(seed);
  p.offset = static_cast<uint64_t>(offset);
  return p;
}

Prepared prepare_apgd_step(const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& x0,
                           const at::Tensor& grad, const at::Tensor& eta, const at::Tensor& eps,
                           double momentum, c10::string_view norm, double lo, double hi,
                           ValueChecks checks) {
  Prepared p = base(x, x0, eps, norm, lo, hi, checks);
  check_same_layout(x_prev, "x_prev", x, "x");
  FR_CHECK(!x_prev.is_same(x), "x_prev must be a different tensor from x");
  check_no_grad(x_prev, "x_prev");
  p.x_prev = x_prev;
  p.grad = like_x(grad, "grad", x, "x");
  p.alpha = per_row(eta, "eta", x, checks);
  FR_CHECK(momentum >= 0 && momentum <= 1, "momentum must be in [0, 1], got ", momentum);
  p.momentum = momentum;
  return p;
}

PreparedBest prepare_update_best(const at::Tensor& best_x, const at::Tensor& best_loss,
                                 const at::Tensor& success, const at::Tensor& x,
                                 const at::Tensor& loss, const at::Tensor& is_adv,
                                 c10::string_view mode, const std::optional<at::Tensor>& nonfinite) {
  check_rows_layout(best_x, "best_x");
  check_no_grad(best_x, "best_x");
  check_no_grad(best_loss, "best_loss");
  PreparedBest p;
  p.best_x = best_x;
  p.x = like_x(x, "x", best_x, "best_x");
  p.rows = best_x.size(0);
  p.row_size = p.rows == 0 ? 0 : best_x.numel() / p.rows;
  const auto acc = acc_dtype(best_x);
  FR_CHECK(best_loss.scalar_type() == acc, "best_loss must be ", acc, " for best_x of dtype ",
           best_x.scalar_type(), ", got ", best_loss.scalar_type());
  FR_CHECK_SHAPE(best_loss, "best_loss", p.rows);
  FR_CHECK(best_loss.is_contiguous(), "best_loss is updated in place and must be contiguous");
  FR_CHECK_SAME_DEVICE(best_loss, "best_loss", best_x, "best_x");
  p.best_loss = best_loss;
  FR_CHECK(success.scalar_type() == at::kBool, "success must be a bool tensor, got ",
           success.scalar_type());
  FR_CHECK_SHAPE(success, "success", p.rows);
  FR_CHECK(success.is_contiguous(), "success is updated in place and must be contiguous");
  FR_CHECK_SAME_DEVICE(success, "success", best_x, "best_x");
  p.success = success;
  FR_CHECK_FLOATING(loss, "loss");
  FR_CHECK_SHAPE(loss, "loss", p.rows);
  FR_CHECK_SAME_DEVICE(loss, "loss", best_x, "best_x");
  p.loss = loss.to(acc).contiguous();
  p.is_adv = row_mask(is_adv, "is_adv", best_x);
  if (nonfinite.has_value()) {
    const at::Tensor& t = *nonfinite;
    FR_CHECK(t.scalar_type() == at::kBool, "nonfinite must be a bool tensor, got ", t.scalar_type());
    FR_CHECK_SHAPE(t, "nonfinite", p.rows);
    FR_CHECK(t.is_contiguous(), "nonfinite is updated in place and must be contiguous");
    FR_CHECK_SAME_DEVICE(t, "nonfinite", best_x, "best_x");
    p.nonfinite = t;
  }
  p.mode = parse_mode(mode);
  return p;
}

}  // namespace pgd

TORCH_LIBRARY_FRAGMENT(fastrobust, m) {
  m.def(kPgdStepSchema);
  m.def(kPgdRandomInitSchema);
  m.def(kPgdUpdateBestSchema);
  m.def(kApgdStepSchema);
}

}  // namespace fastrobust
