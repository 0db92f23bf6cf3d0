#pragma once
// Margin losses on logits (CW margin, DLR; untargeted and targeted): schemas, checks and
// the preparation every backend runs first.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "../common/checks.h"
#include "../kernels/margin_loss.h"

namespace fastrobust {

constexpr const char* kMarginLossSchema =
    "margin_loss(Tensor logits, Tensor labels, Tensor? targets, str kind, float kappa) -> Tensor";
constexpr const char* kMarginLossBackwardSchema =
    "_margin_loss_backward(Tensor grad_loss, Tensor logits, Tensor labels, Tensor? targets, "
    "str kind, float kappa) -> Tensor";

namespace margin {

struct Prepared {
  at::Tensor logits, labels, targets, grad_loss;  // contiguous; targets/grad_loss may be undefined
  Kind kind = Kind::CW;
  double kappa = 0;
};

// logits (N, C) floating; labels/targets int64 (N,) on logits' device; enough classes for
// the loss (CW 2, DLR 3, targeted DLR 4). Label values are checked here with kHost; with
// kDevice (CUDA, where a host check would wait for the device) the kernel asserts them.
Prepared prepare(const at::Tensor& logits, const at::Tensor& labels,
                 const std::optional<at::Tensor>& targets, c10::string_view kind, double kappa,
                 ValueChecks checks = ValueChecks::kHost);
Prepared prepare_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                          const at::Tensor& labels, const std::optional<at::Tensor>& targets,
                          c10::string_view kind, double kappa, ValueChecks checks = ValueChecks::kHost);

template <typename scalar_t, typename acc>
MarginPtrs<scalar_t, acc> ptrs(const Prepared& p, const at::Tensor& out) {
  MarginPtrs<scalar_t, acc> r;
  r.logits = p.logits.const_data_ptr<scalar_t>();
  r.labels = p.labels.const_data_ptr<int64_t>();
  r.targets = p.targets.defined() ? p.targets.const_data_ptr<int64_t>() : nullptr;
  r.grad_loss = p.grad_loss.defined() ? p.grad_loss.const_data_ptr<scalar_t>() : nullptr;
  r.out = out.mutable_data_ptr<scalar_t>();
  r.rows = p.logits.size(0);
  r.classes = p.logits.size(1);
  r.kind = p.kind;
  r.kappa = static_cast<acc>(p.kappa);
  return r;
}

}  // namespace margin
}  // namespace fastrobust
