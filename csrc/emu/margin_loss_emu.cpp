// The margin-loss CUDA device code run on the CPU through the emulator, as the ops
// fastrobust_emu::margin_loss and fastrobust_emu::_margin_loss_backward on CPU tensors.
#define FR_CUDA_EMULATION 1
#include <torch/library.h>

#include "../cuda/margin_loss_dispatch.h"

namespace fastrobust {
namespace {

at::Tensor margin_loss_emu(const at::Tensor& logits, const at::Tensor& labels,
                           const std::optional<at::Tensor>& targets, c10::string_view kind, double kappa) {
  return emu::margin::forward(logits, labels, targets, kind, kappa, nullptr);
}

at::Tensor margin_loss_backward_emu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                    const at::Tensor& labels, const std::optional<at::Tensor>& targets,
                                    c10::string_view kind, double kappa) {
  return emu::margin::backward(grad_loss, logits, labels, targets, kind, kappa, nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def(kMarginLossSchema);
  m.def(kMarginLossBackwardSchema);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("margin_loss", &margin_loss_emu);
  m.impl("_margin_loss_backward", &margin_loss_backward_emu);
}

}  // namespace fastrobust
