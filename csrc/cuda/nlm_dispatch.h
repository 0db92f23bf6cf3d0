#pragma once
// Tensor-level entry points of the softmax non-local-means device kernels (nvcc and the emulator).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "../ops/nlm.h"
#include "nlm_kernels.cuh"
#include "nlm_wmma_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace pn = ::fastrobust::nlm;

// tensor_cores: fp16 / bf16 inputs run the wmma kernels (the device must be sm_80 or newer).
inline std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
                                                  double scale, bool tensor_cores, cudaStream_t stream) {
  const auto p = pn::prepare(theta, phi, g, scale);
  at::Tensor y = at::empty({p.batch, p.channels, p.positions}, p.g.options());
  at::Tensor lse = at::empty({p.batch, p.positions}, p.theta.options().dtype(pn::acc_dtype(theta)));
  if (p.batch > 0 && p.positions > 0) {
    // the row max of the two-pass tensor-core forward (B x N floats; unused otherwise)
    const bool half_type = theta.scalar_type() == at::kHalf || theta.scalar_type() == at::kBFloat16;
    const at::Tensor row_max = tensor_cores && half_type ? at::empty_like(lse) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.theta.scalar_type(), "nlm_gaussian", [&] {
      auto a = pn::ptrs<scalar_t, acc_t<scalar_t>>(p);
      a.out = y.mutable_data_ptr<scalar_t>();
      a.lse = lse.mutable_data_ptr<acc_t<scalar_t>>();
      if (row_max.defined()) a.row_max = row_max.mutable_data_ptr<acc_t<scalar_t>>();
      launch_forward<scalar_t>(a, tensor_cores, stream);
    });
  }
  return {y.view(g.sizes()), lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_y, const at::Tensor& theta,
                                                               const at::Tensor& phi, const at::Tensor& g,
                                                               const at::Tensor& y, const at::Tensor& lse,
                                                               double scale, bool tensor_cores,
                                                               cudaStream_t stream) {
  const auto p = pn::prepare_backward(grad_y, theta, phi, g, y, lse, scale);
  at::Tensor grad_theta = at::empty_like(p.theta), grad_phi = at::empty_like(p.phi), grad_g = at::empty_like(p.g);
  if (p.batch > 0 && p.positions > 0) {
    at::Tensor row_dot = at::empty_like(p.lse);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.theta.scalar_type(), "nlm_gaussian_backward", [&] {
      auto a = pn::ptrs<scalar_t, acc_t<scalar_t>>(p);
      a.lse = p.lse.data_ptr<acc_t<scalar_t>>();
      a.row_dot = row_dot.mutable_data_ptr<acc_t<scalar_t>>();
      a.grad_theta = grad_theta.mutable_data_ptr<scalar_t>();
      a.grad_phi = grad_phi.mutable_data_ptr<scalar_t>();
      a.grad_g = grad_g.mutable_data_ptr<scalar_t>();
      launch_backward<scalar_t>(a, tensor_cores, stream);
    });
  }
  return {grad_theta.view(theta.sizes()), grad_phi.view(phi.sizes()), grad_g.view(g.sizes())};
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
