// Softmax non-local-means CUDA device code run on the CPU through the emulator, as the ops
// fastrobust_emu::nlm_gaussian and fastrobust_emu::_nlm_gaussian_backward on CPU tensors.
//
// fp16/bf16 inputs take the tensor-core kernels, as on an sm_80+ GPU; with the environment
// variable FASTROBUST_EMU_SIMT=1 they take the SIMT kernels instead, as on older GPUs.
#define FR_CUDA_EMULATION 1
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../cuda/nlm_dispatch.h"

namespace fastrobust {
namespace {

bool emulate_tensor_cores() {
  const char* simt = std::getenv("FASTROBUST_EMU_SIMT");
  return simt == nullptr || std::strcmp(simt, "1") != 0;
}

std::tuple<at::Tensor, at::Tensor> nlm_gaussian_emu(const at::Tensor& theta, const at::Tensor& phi,
                                                    const at::Tensor& g, double scale) {
  return emu::nlm::forward(theta, phi, g, scale, emulate_tensor_cores(), nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nlm_gaussian_backward_emu(
    const at::Tensor& grad_y, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const at::Tensor& y, const at::Tensor& lse, double scale) {
  return emu::nlm::backward(grad_y, theta, phi, g, y, lse, scale, emulate_tensor_cores(), nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def(kNlmGaussianSchema);
  m.def(kNlmGaussianBackwardSchema);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("nlm_gaussian", &nlm_gaussian_emu);
  m.impl("_nlm_gaussian_backward", &nlm_gaussian_backward_emu);
}

}  // namespace fastrobust
