// Softmax non-local means, CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "nlm_dispatch.h"

namespace fastrobust {
namespace {

// The wmma kernels need bf16 tensor cores: compute capability 8.0 or newer.
bool has_tensor_cores() { return at::cuda::getCurrentDeviceProperties()->major >= 8; }

std::tuple<at::Tensor, at::Tensor> nlm_gaussian_cuda(const at::Tensor& theta, const at::Tensor& phi,
                                                     const at::Tensor& g, double scale) {
  const c10::cuda::CUDAGuard guard(theta.device());
  return cuda::nlm::forward(theta, phi, g, scale, has_tensor_cores(), at::cuda::getCurrentCUDAStream());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nlm_gaussian_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const at::Tensor& y, const at::Tensor& lse, double scale) {
  const c10::cuda::CUDAGuard guard(theta.device());
  return cuda::nlm::backward(grad_y, theta, phi, g, y, lse, scale, has_tensor_cores(),
                             at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CUDA, m) {
  m.impl("nlm_gaussian", &nlm_gaussian_cuda);
  m.impl("_nlm_gaussian_backward", &nlm_gaussian_backward_cuda);
}

}  // namespace fastrobust
