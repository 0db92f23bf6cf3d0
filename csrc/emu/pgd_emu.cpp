// The PGD engine's CUDA device code run on the CPU through the emulator, as the ops
// fastrobust_emu::pgd_step_, pgd_random_init_, pgd_update_best_ and apgd_step_ on CPU tensors.
#define FR_CUDA_EMULATION 1
#include <torch/library.h>

#include "../cuda/pgd_dispatch.h"

namespace fastrobust {
namespace {

void pgd_step_emu(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                  const at::Tensor& eps, const at::Tensor& alpha, const std::optional<at::Tensor>& active,
                  const std::optional<at::Tensor>& noise, c10::string_view norm, double lo, double hi,
                  bool descent) {
  emu::pgd::step(x, x0, grad, eps, alpha, active, noise, norm, lo, hi, descent, nullptr);
}

void pgd_random_init_emu(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
                         c10::string_view norm, double lo, double hi, int64_t seed, int64_t offset) {
  emu::pgd::random_init(x, x0, eps, norm, lo, hi, seed, offset, nullptr);
}

void apgd_step_emu(const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& x0,
                   const at::Tensor& grad, const at::Tensor& eta, const at::Tensor& eps,
                   double momentum, c10::string_view norm, double lo, double hi) {
  emu::pgd::apgd_step(x, x_prev, x0, grad, eta, eps, momentum, norm, lo, hi, nullptr);
}

void pgd_update_best_emu(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& success,
                         const at::Tensor& x, const at::Tensor& loss, const at::Tensor& is_adv,
                         c10::string_view mode, const std::optional<at::Tensor>& nonfinite) {
  emu::pgd::update_best(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite, nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def(kPgdStepSchema);
  m.def(kPgdRandomInitSchema);
  m.def(kPgdUpdateBestSchema);
  m.def(kApgdStepSchema);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("pgd_step_", &pgd_step_emu);
  m.impl("pgd_random_init_", &pgd_random_init_emu);
  m.impl("pgd_update_best_", &pgd_update_best_emu);
  m.impl("apgd_step_", &apgd_step_emu);
}

}  // namespace fastrobust
