// Sparta CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "sparta_dispatch.h"

namespace fastrobust {
namespace {

at::Tensor sparta_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda::sparta::forward(x, weight, bias, at::cuda::getCurrentCUDAStream());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparta_backward_cuda(const at::Tensor& grad_y,
                                                                    const at::Tensor& x,
                                                                    const at::Tensor& weight,
                                                                    const at::Tensor& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda::sparta::backward(grad_y, x, weight, bias, at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CUDA, m) {
  m.impl("sparta", &sparta_cuda);
  m.impl("_sparta_backward", &sparta_backward_cuda);
}

}  // namespace fastrobust
