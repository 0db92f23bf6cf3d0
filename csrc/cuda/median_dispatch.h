#pragma once
// Tensor-level entry points of the 3x3 median device kernels: prepare (check, make
// contiguous), allocate, dispatch on dtype, launch. Compiled by nvcc for the CUDA backend and
// by g++ for the emulated one (FR_KERNEL_NS tells the two apart).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "../ops/median.h"
#include "median_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace median {

inline std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, cudaStream_t stream) {
  const auto p = ::fastrobust::median::prepare(x);
  at::Tensor y = at::empty_like(p.x, at::MemoryFormat::Contiguous);
  at::Tensor arg = at::empty(p.x.sizes(), p.x.options().dtype(at::kByte));
  if (y.numel() == 0) return {y, arg};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "median3x3", [&] {
    launch_forward<scalar_t>(::fastrobust::median::forward_ptrs<scalar_t>(p, y, arg), stream);
  });
  return {y, arg};
}

inline at::Tensor backward(const at::Tensor& grad_y, const at::Tensor& arg, cudaStream_t stream) {
  const auto p = ::fastrobust::median::prepare_backward(grad_y, arg, ValueChecks::kDevice);
  at::Tensor grad_x = at::empty_like(p.grad_y, at::MemoryFormat::Contiguous);
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.grad_y.scalar_type(), "median3x3_backward", [&] {
    launch_backward<scalar_t>(::fastrobust::median::backward_ptrs<scalar_t>(p, grad_x), stream);
  });
  return grad_x;
}

}  // namespace median
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
