// The 3x3 median filter's CUDA device code run on the CPU through the emulator, as the ops
// fastrobust_emu::median3x3 and fastrobust_emu::_median3x3_backward on CPU tensors.
#define FR_CUDA_EMULATION 1
#include <torch/library.h>

#include "../cuda/median_dispatch.h"

namespace fastrobust {
namespace {

std::tuple<at::Tensor, at::Tensor> median3x3_emu(const at::Tensor& x) { return emu::median::forward(x, nullptr); }

at::Tensor median3x3_backward_emu(const at::Tensor& grad_y, const at::Tensor& arg) {
  return emu::median::backward(grad_y, arg, nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def(kMedian3x3Schema);
  m.def(kMedian3x3BackwardSchema);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("median3x3", &median3x3_emu);
  m.impl("_median3x3_backward", &median3x3_backward_emu);
}

}  // namespace fastrobust
