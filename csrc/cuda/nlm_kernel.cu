// Softmax non-local means, CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <atomic>

#include "nlm_dispatch.h"

namespace fastrobust {
namespace {

// The tensor-core kernels (mma.sync) run where the device has bf16 tensor cores and
// their compiled code has a body (tensor_core_kernels_usable); decided once per device.
bool has_tensor_cores() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> decided[kMaxDevices];  // 0: not yet, 1: no, 2: yes
  const int device = c10::cuda::current_device();
  if (device < kMaxDevices && decided[device].load() != 0) return decided[device].load() == 2;
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, (cuda::nlm::forward_mma_kernel<c10::BFloat16, 64>)));
  const bool usable = nlm::tensor_core_kernels_usable(at::cuda::getCurrentDeviceProperties()->major,
                                                      attr.binaryVersion, attr.ptxVersion);
  if (device < kMaxDevices) decided[device].store(usable ? 2 : 1);
  return usable;
}

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
