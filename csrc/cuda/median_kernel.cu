// 3x3 median filter, CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "median_dispatch.h"

namespace fastrobust {
namespace {

std::tuple<at::Tensor, at::Tensor> median3x3_cuda(const at::Tensor& x) {
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda::median::forward(x, at::cuda::getCurrentCUDAStream());
}

at::Tensor median3x3_backward_cuda(const at::Tensor& grad_y, const at::Tensor& arg) {
  const c10::cuda::CUDAGuard guard(grad_y.device());
  return cuda::median::backward(grad_y, arg, at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CUDA, m) {
  m.impl("median3x3", &median3x3_cuda);
  m.impl("_median3x3_backward", &median3x3_backward_cuda);
}

}  // namespace fastrobust
