#pragma once
// Tensor-level entry points of the margin-loss device kernels (nvcc and the emulator).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <optional>

#include "../ops/margin_loss.h"
#include "margin_loss_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace margin {

inline at::Tensor forward(const at::Tensor& logits, const at::Tensor& labels,
                          const std::optional<at::Tensor>& targets, c10::string_view kind,
                          double kappa, cudaStream_t stream) {
  const auto p = ::fastrobust::margin::prepare(logits, labels, targets, kind, kappa, ValueChecks::kDevice);
  at::Tensor loss = at::empty({logits.size(0)}, logits.options());
  if (loss.numel() == 0) return loss;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss", [&] {
    launch<scalar_t, false>(::fastrobust::margin::ptrs<scalar_t, acc_t<scalar_t>>(p, loss), stream);
  });
  return loss;
}

inline at::Tensor backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                           const at::Tensor& labels, const std::optional<at::Tensor>& targets,
                           c10::string_view kind, double kappa, cudaStream_t stream) {
  const auto p = ::fastrobust::margin::prepare_backward(grad_loss, logits, labels, targets, kind, kappa,
                                                         ValueChecks::kDevice);
  at::Tensor grad = at::empty_like(p.logits);
  if (grad.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss_backward", [&] {
    launch<scalar_t, true>(::fastrobust::margin::ptrs<scalar_t, acc_t<scalar_t>>(p, grad), stream);
  });
  return grad;
}

}  // namespace margin
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
