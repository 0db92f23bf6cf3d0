// Margin losses, CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "margin_loss_dispatch.h"

namespace fastrobust {
namespace {

at::Tensor margin_loss_cuda(const at::Tensor& logits, const at::Tensor& labels,
                            const std::optional<at::Tensor>& targets, c10::string_view kind, double kappa) {
  const c10::cuda::CUDAGuard guard(logits.device());
  return cuda::margin::forward(logits, labels, targets, kind, kappa, at::cuda::getCurrentCUDAStream());
}

at::Tensor margin_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                     const at::Tensor& labels, const std::optional<at::Tensor>& targets,
                                     c10::string_view kind, double kappa) {
  const c10::cuda::CUDAGuard guard(logits.device());
  return cuda::margin::backward(grad_loss, logits, labels, targets, kind, kappa,
                                at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CUDA, m) {
  m.impl("margin_loss", &margin_loss_cuda);
  m.impl("_margin_loss_backward", &margin_loss_backward_cuda);
}

}  // namespace fastrobust
