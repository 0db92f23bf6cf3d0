#pragma once
// The PGD engine's fused in-place ops: schemas, argument checks, and the preparation every
// backend runs first (layouts made to match x, eps/alpha/eta as per-row vectors).
//
// Rows are dim 0 (a sample, or a sample under one restart when restarts are folded into
// the batch); a row's elements may be in any order in memory (contiguous or channels_last)
// as long as each row is one dense block: the ops only need elementwise access and per-row
// sums. x (mutated in place) must have such a layout; read-only tensors with other strides
// are copied into x's layout; other mutated tensors must already share it.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "../common/checks.h"
#include "../kernels/pgd.h"

namespace fastrobust {

constexpr const char* kPgdStepSchema =
    "pgd_step_(Tensor(a!) x, Tensor x0, Tensor grad, Tensor eps, Tensor alpha, Tensor? active, "
    "Tensor? noise, str norm, float lo, float hi, bool descent) -> ()";
constexpr const char* kPgdRandomInitSchema =
    "pgd_random_init_(Tensor(a!) x, Tensor x0, Tensor eps, str norm, float lo, float hi, int seed, "
    "int offset) -> ()";
// `keep` is the Python API's `mode` (an argument named `mode` clashes with PyTorch's
// dispatch-mode machinery under torch.compile).
// nonfinite (optional, bool (rows,)): set for the rows whose loss is not finite in this call.
constexpr const char* kPgdUpdateBestSchema =
    "pgd_update_best_(Tensor(a!) best_x, Tensor(b!) best_loss, Tensor(c!) success, Tensor x, "
    "Tensor loss, Tensor is_adv, str keep, Tensor(d!)? nonfinite=None) -> ()";
constexpr const char* kApgdStepSchema =
    "apgd_step_(Tensor(a!) x, Tensor(b!) x_prev, Tensor x0, Tensor grad, Tensor eta, Tensor eps, "
    "float momentum, str norm, float lo, float hi) -> ()";

namespace pgd {

// The tensors of one op call, ready for a kernel: every x-shaped tensor in x's layout,
// per-row parameters as 1-D tensors in the accumulation dtype (1 or `rows` values), masks
// as contiguous bool vectors. Absent optionals stay undefined.
struct Prepared {
  at::Tensor x, x0, grad, noise, x_prev;  // x_prev: apgd_step_ only
  at::Tensor eps, alpha;                  // alpha is eta for apgd_step_
  at::Tensor active;
  int64_t rows = 0, row_size = 0;
  Norm norm = Norm::Linf;
  double lo = 0, hi = 1;
  bool descent = false;
  double momentum = 1;
  uint64_t seed = 0, offset = 0;
};

struct PreparedBest {
  at::Tensor best_x, best_loss, success, x, loss, is_adv, nonfinite;  // nonfinite may be undefined
  int64_t rows = 0, row_size = 0;
  BestMode mode = BestMode::Loss;
};

Prepared prepare_step(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                      const at::Tensor& eps, const at::Tensor& alpha,
                      const std::optional<at::Tensor>& active,
                      const std::optional<at::Tensor>& noise, c10::string_view norm, double lo,
                      double hi, bool descent, ValueChecks checks = ValueChecks::kHost);
Prepared prepare_random_init(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
                             c10::string_view norm, double lo, double hi, int64_t seed,
                             int64_t offset, ValueChecks checks = ValueChecks::kHost);
Prepared prepare_apgd_step(const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& x0,
                           const at::Tensor& grad, const at::Tensor& eta, const at::Tensor& eps,
                           double momentum, c10::string_view norm, double lo, double hi,
                           ValueChecks checks = ValueChecks::kHost);
PreparedBest prepare_update_best(const at::Tensor& best_x, const at::Tensor& best_loss,
                                 const at::Tensor& success, const at::Tensor& x,
                                 const at::Tensor& loss, const at::Tensor& is_adv,
                                 c10::string_view mode, const std::optional<at::Tensor>& nonfinite);

// Raw pointers of a Prepared call for kernels over scalar_t (see kernels/pgd.h RowPtrs).
template <typename scalar_t, typename acc>
RowPtrs<scalar_t, acc> row_ptrs(const Prepared& p) {
  RowPtrs<scalar_t, acc> r;
  r.x = p.x.mutable_data_ptr<scalar_t>();
  r.x_prev = p.x_prev.defined() ? p.x_prev.mutable_data_ptr<scalar_t>() : nullptr;
  r.x0 = p.x0.const_data_ptr<scalar_t>();
  r.grad = p.grad.defined() ? p.grad.const_data_ptr<scalar_t>() : nullptr;
  r.noise = p.noise.defined() ? p.noise.const_data_ptr<scalar_t>() : nullptr;
  r.eps = p.eps.const_data_ptr<acc>();
  r.eps_stride = p.eps.numel() == 1 ? 0 : 1;
  r.alpha = p.alpha.defined() ? p.alpha.const_data_ptr<acc>() : nullptr;
  r.alpha_stride = p.alpha.defined() && p.alpha.numel() != 1 ? 1 : 0;
  r.active = p.active.defined() ? p.active.const_data_ptr<bool>() : nullptr;
  r.rows = p.rows;
  r.row_size = p.row_size;
  r.lo = static_cast<acc>(p.lo);
  r.hi = static_cast<acc>(p.hi);
  r.descent = p.descent;
  r.momentum = static_cast<acc>(p.momentum);
  r.seed = p.seed;
  r.offset = p.offset;
  return r;
}

template <typename scalar_t, typename acc>
BestPtrs<scalar_t, acc> best_ptrs(const PreparedBest& p) {
  BestPtrs<scalar_t, acc> r;
  r.best_x = p.best_x.mutable_data_ptr<scalar_t>();
  r.best_loss = p.best_loss.mutable_data_ptr<acc>();
  r.success = p.success.mutable_data_ptr<bool>();
  r.nonfinite = p.nonfinite.defined() ? p.nonfinite.mutable_data_ptr<bool>() : nullptr;
  r.x = p.x.const_data_ptr<scalar_t>();
  r.loss = p.loss.const_data_ptr<acc>();
  r.is_adv = p.is_adv.const_data_ptr<bool>();
  r.rows = p.rows;
  r.row_size = p.row_size;
  r.mode = p.mode;
  return r;
}

}  // namespace pgd
}  // namespace fastrobust
