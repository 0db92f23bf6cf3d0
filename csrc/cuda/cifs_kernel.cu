// CIFS reweighting, CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cifs_dispatch.h"

namespace fastrobust {
namespace {

at::Tensor cifs_reweight_cuda(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale) {
  const c10::cuda::CUDAGuard guard(feat.device());
  return cuda::cifs::forward(feat, relevance, temperature, scale, at::cuda::getCurrentCUDAStream());
}

std::tuple<at::Tensor, at::Tensor> cifs_reweight_backward_cuda(const at::Tensor& grad_out, const at::Tensor& feat,
                                                               const at::Tensor& relevance, double temperature,
                                                               double scale,
                                                               const std::optional<at::Tensor>& grad_pooled) {
  const c10::cuda::CUDAGuard guard(feat.device());
  return cuda::cifs::backward(grad_out, feat, relevance, temperature, scale, grad_pooled,
                              at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CUDA, m) {
  m.impl("cifs_reweight", &cifs_reweight_cuda);
  m.impl("_cifs_reweight_backward", &cifs_reweight_backward_cuda);
}

}  // namespace fastrobust
