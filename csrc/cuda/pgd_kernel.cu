// PGD engine ops, CUDA backend: device guard, current stream, then the shared tensor-level code.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "pgd_dispatch.h"

namespace fastrobust {
namespace {

void pgd_step_cuda(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                   const at::Tensor& eps, const at::Tensor& alpha, const std::optional<at::Tensor>& active,
                   const std::optional<at::Tensor>& noise, c10::string_view norm, double lo, double hi,
                   bool descent) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::pgd::step(x, x0, grad, eps, alpha, active, noise, norm, lo, hi, descent,
                  at::cuda::getCurrentCUDAStream());
}

void pgd_random_init_cuda(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
                          c10::string_view norm, double lo, double hi, int64_t seed, int64_t offset) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::pgd::random_init(x, x0, eps, norm, lo, hi, seed, offset, at::cuda::getCurrentCUDAStream());
}

void apgd_step_cuda(const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& x0,
                    const at::Tensor& grad, const at::Tensor& eta, const at::Tensor& eps,
                    double momentum, c10::string_view norm, double lo, double hi) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::pgd::apgd_step(x, x_prev, x0, grad, eta, eps, momentum, norm, lo, hi,
                       at::cuda::getCurrentCUDAStream());
}

void pgd_update_best_cuda(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& success,
                          const at::Tensor& x, const at::Tensor& loss, const at::Tensor& is_adv,
                          c10::string_view mode, const std::optional<at::Tensor>& nonfinite) {
  const c10::cuda::CUDAGuard guard(best_x.device());
  cuda::pgd::update_best(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite,
                         at::cuda::getCurrentCUDAStream());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CUDA, m) {
  m.impl("pgd_step_", &pgd_step_cuda);
  m.impl("pgd_random_init_", &pgd_random_init_cuda);
  m.impl("pgd_update_best_", &pgd_update_best_cuda);
  m.impl("apgd_step_", &apgd_step_cuda);
}

}  // namespace fastrobust
