#pragma once
// Tensor-level entry points of the Sparta device kernels: check, make contiguous, allocate,
// dispatch on dtype, launch. Compiled twice: by nvcc for the CUDA backend and by g++ for
// the emulated one (FR_KERNEL_NS tells the two apart), so the emulator runs this code too.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <tuple>

#include "../ops/sparta.h"
#include "sparta_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace sparta {

inline Geometry geometry(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2), x.size(3)};
}

inline at::Tensor forward(const at::Tensor& x_, const at::Tensor& weight_,
                          const at::Tensor& bias_, cudaStream_t stream) {
  check_sparta_args(x_, weight_, bias_);
  const at::Tensor x = x_.contiguous(), weight = weight_.contiguous(), bias = bias_.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_forward", [&] {
    launch_forward<scalar_t>(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                             bias.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                             geometry(x), static_cast<int>(weight.size(2)), stream);
  });
  return y;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_y_,
                                                               const at::Tensor& x_,
                                                               const at::Tensor& weight_,
                                                               const at::Tensor& bias_,
                                                               cudaStream_t stream) {
  check_sparta_backward_args(grad_y_, x_, weight_, bias_);
  const at::Tensor grad_y = grad_y_.contiguous(), x = x_.contiguous();
  const at::Tensor weight = weight_.contiguous(), bias = bias_.contiguous();
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  // Weight and bias gradients: per-block partial sums in the accumulation type, added in a
  // fixed order by a second kernel that writes every element of grad_w and grad_b in their
  // own dtype (no fill, no cast: two launches in all). Zeros where there is nothing to sum.
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool empty = x.numel() == 0;
  at::Tensor grad_w = empty ? at::zeros(weight.sizes(), weight.options()) : at::empty(weight.sizes(), weight.options());
  at::Tensor grad_b = empty ? at::zeros(bias.sizes(), bias.options()) : at::empty(bias.sizes(), bias.options());
  if (!empty) {
    const int k = static_cast<int>(weight.size(2));
    const int64_t per_channel = backward_partials_per_channel(geometry(x), k, c10::elementSize(acc_dtype));
    at::Tensor partials = at::empty({x.size(1), per_channel}, x.options().dtype(acc_dtype));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_backward", [&] {
      using acc = acc_t<scalar_t>;
      launch_backward<scalar_t>(grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                                grad_x.mutable_data_ptr<scalar_t>(), partials.mutable_data_ptr<acc>(),
                                grad_w.mutable_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>(),
                                geometry(x), k, stream);
    });
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace sparta
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
