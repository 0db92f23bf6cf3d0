#pragma once
// Tensor-level entry points of the CIFS reweighting device kernels (nvcc and the emulator).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>

#include <tuple>

#include "../ops/cifs.h"
#include "cifs_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace cifs {

inline at::Tensor forward(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale,
                          cudaStream_t stream) {
  const auto p = ::fastrobust::cifs::prepare(feat, relevance, temperature, scale);
  at::Tensor out = at::empty_like(p.feat);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feat.scalar_type(), "cifs_reweight", [&] {
    launch_forward<scalar_t>(::fastrobust::cifs::ptrs<scalar_t, acc_t<scalar_t>>(p, out, at::Tensor(), at::Tensor()),
                             stream);
  });
  return out;
}

inline std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& feat,
                                                   const at::Tensor& relevance, double temperature, double scale,
                                                   const std::optional<at::Tensor>& grad_pooled, cudaStream_t stream) {
  const auto p = ::fastrobust::cifs::prepare_backward(grad_out, feat, relevance, temperature, scale, grad_pooled);
  at::Tensor grad_feat = at::empty_like(p.feat);
  // An empty map (H W = 0) has d = 0, hence a zero relevance gradient; the kernels need HW > 0.
  at::Tensor grad_relevance = p.spatial == 0 ? at::zeros_like(p.relevance) : at::empty_like(p.relevance);
  if (p.batch > 0 && p.channels > 0 && p.spatial > 0) {
    at::Tensor channel_dots = at::empty_like(p.relevance);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feat.scalar_type(), "cifs_reweight_backward", [&] {
      launch_backward<scalar_t>(
          ::fastrobust::cifs::ptrs<scalar_t, acc_t<scalar_t>>(p, grad_feat, grad_relevance, channel_dots), stream);
    });
  }
  return {grad_feat, grad_relevance.to(p.relevance_dtype)};
}

}  // namespace cifs
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
