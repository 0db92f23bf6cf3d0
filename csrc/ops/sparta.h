#pragma once
// Sparta op: schemas and the argument checks every backend runs first.
#include <ATen/core/Tensor.h>

namespace fastrobust {

// Schemas, shared by the `fastrobust` library and the emulated `fastrobust_emu` one.
constexpr const char* kSpartaSchema = "sparta(Tensor x, Tensor weight, Tensor bias) -> Tensor";
constexpr const char* kSpartaBackwardSchema =
    "_sparta_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor bias) "
    "-> (Tensor, Tensor, Tensor)";

// x (N,C,H,W) floating; weight (C,1,k,k) with odd k; bias (C); one dtype and device.
void check_sparta_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
// The above, plus grad_y with x's shape, dtype and device.
void check_sparta_backward_args(const at::Tensor& grad_y, const at::Tensor& x,
                                const at::Tensor& weight, const at::Tensor& bias);

}  // namespace fastrobust
