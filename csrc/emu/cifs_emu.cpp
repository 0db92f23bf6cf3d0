// CIFS's reweighting CUDA device code run on the CPU through the emulator, as the ops
// fastrobust_emu::cifs_reweight and fastrobust_emu::_cifs_reweight_backward on CPU tensors.
#define FR_CUDA_EMULATION 1
#include <torch/library.h>

#include "../cuda/cifs_dispatch.h"

namespace fastrobust {
namespace {

at::Tensor cifs_reweight_emu(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale) {
  return emu::cifs::forward(feat, relevance, temperature, scale, nullptr);
}

std::tuple<at::Tensor, at::Tensor> cifs_reweight_backward_emu(const at::Tensor& grad_out, const at::Tensor& feat,
                                                              const at::Tensor& relevance, double temperature,
                                                              double scale,
                                                              const std::optional<at::Tensor>& grad_pooled) {
  return emu::cifs::backward(grad_out, feat, relevance, temperature, scale, grad_pooled, nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def(kCifsReweightSchema);
  m.def(kCifsReweightBackwardSchema);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("cifs_reweight", &cifs_reweight_emu);
  m.impl("_cifs_reweight_backward", &cifs_reweight_backward_emu);
}

}  // namespace fastrobust
