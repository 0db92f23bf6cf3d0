#pragma once
// Tensor-level entry points of the PGD engine's device kernels: prepare (checks, layouts),
// dispatch on dtype, launch. Compiled by nvcc for the CUDA backend and by g++ for the
// emulated one (FR_KERNEL_NS tells the two apart), so the emulator runs this code too.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <optional>

#include "../ops/pgd.h"
#include "pgd_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace pgd {

using ::fastrobust::pgd::Prepared;

template <typename Launch>
void dispatch_rows(const Prepared& p, Launch launch) {
  if (p.rows == 0 || p.row_size == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "pgd_rows", [&] {
    launch(::fastrobust::pgd::row_ptrs<scalar_t, acc_t<scalar_t>>(p));
  });
}

inline void step(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                 const at::Tensor& eps, const at::Tensor& alpha,
                 const std::optional<at::Tensor>& active, const std::optional<at::Tensor>& noise,
                 c10::string_view norm, double lo, double hi, bool descent, cudaStream_t stream) {
  const Prepared p = ::fastrobust::pgd::prepare_step(x, x0, grad, eps, alpha, active, noise, norm, lo, hi, descent,
                                                                ValueChecks::kDevice);
  dispatch_rows(p, [&](const auto& ptrs) { launch_step(ptrs, p.norm, stream); });
}

inline void random_init(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
                        c10::string_view norm, double lo, double hi, int64_t seed, int64_t offset,
                        cudaStream_t stream) {
  const Prepared p = ::fastrobust::pgd::prepare_random_init(x, x0, eps, norm, lo, hi, seed, offset,
                                                                       ValueChecks::kDevice);
  dispatch_rows(p, [&](const auto& ptrs) { launch_random_init(ptrs, p.norm, stream); });
}

inline void apgd_step(const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& x0,
                      const at::Tensor& grad, const at::Tensor& eta, const at::Tensor& eps,
                      double momentum, c10::string_view norm, double lo, double hi, cudaStream_t stream) {
  const Prepared p = ::fastrobust::pgd::prepare_apgd_step(x, x_prev, x0, grad, eta, eps, momentum, norm, lo, hi,
                                                                     ValueChecks::kDevice);
  dispatch_rows(p, [&](const auto& ptrs) { launch_apgd(ptrs, p.norm, stream); });
}

inline void update_best(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& success,
                        const at::Tensor& x, const at::Tensor& loss, const at::Tensor& is_adv,
                        c10::string_view mode, const std::optional<at::Tensor>& nonfinite,
                        cudaStream_t stream) {
  const auto p = ::fastrobust::pgd::prepare_update_best(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite);
  if (p.rows == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.best_x.scalar_type(), "pgd_update_best_", [&] {
    launch_update_best(::fastrobust::pgd::best_ptrs<scalar_t, acc_t<scalar_t>>(p), stream);
  });
}

}  // namespace pgd
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
