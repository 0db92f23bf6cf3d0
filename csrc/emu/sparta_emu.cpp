// Sparta's CUDA device code run on the CPU through the emulator, as the ops
// fastrobust_emu::sparta and fastrobust_emu::_sparta_backward on CPU tensors.
#define FR_CUDA_EMULATION 1
#include <torch/library.h>

#include "../cuda/sparta_dispatch.h"

namespace fastrobust {
namespace {

at::Tensor sparta_emu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return emu::sparta::forward(x, weight, bias, nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparta_backward_emu(const at::Tensor& grad_y,
                                                                   const at::Tensor& x,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& bias) {
  return emu::sparta::backward(grad_y, x, weight, bias, nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def(kSpartaSchema);
  m.def(kSpartaBackwardSchema);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("sparta", &sparta_emu);
  m.impl("_sparta_backward", &sparta_backward_emu);
}

}  // namespace fastrobust
