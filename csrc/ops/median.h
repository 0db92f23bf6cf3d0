#pragma once
// The 3x3 per-channel median filter median3x3(x) -> (y, arg) of NLM feature denoising, and its
// backward: schemas, checks and the preparation every backend runs first. The maths and its
// rules (reflect padding, tie breaking, NaN) are in csrc/kernels/median.h.
#include <ATen/core/Tensor.h>

#include "../common/checks.h"
#include "../kernels/median.h"

namespace fastrobust {

// Schemas, shared by the `fastrobust` library and the emulated `fastrobust_emu` one.
// y: x's shape and dtype (contiguous NCHW); arg: uint8, x's shape, the selected window position.
constexpr const char* kMedian3x3Schema = "median3x3(Tensor x) -> (Tensor, Tensor)";
constexpr const char* kMedian3x3BackwardSchema = "_median3x3_backward(Tensor grad_y, Tensor arg) -> Tensor";

namespace median {

struct Prepared {
  at::Tensor x;       // forward: contiguous NCHW
  at::Tensor grad_y;  // backward: contiguous NCHW
  at::Tensor arg;     // backward: contiguous NCHW, uint8
  int64_t batch = 0, channels = 0, height = 0, width = 0;

  int64_t planes() const { return batch * channels; }
};

// x (B, C, H, W) floating (float32, float64, float16, bfloat16), any layout.
Prepared prepare(const at::Tensor& x);
// grad_y (B, C, H, W) floating, any layout; arg uint8 with grad_y's shape, on its device, values
// in [0, 9): checked here with kHost, asserted by the CUDA kernel with kDevice.
Prepared prepare_backward(const at::Tensor& grad_y, const at::Tensor& arg,
                          ValueChecks checks = ValueChecks::kHost);

template <typename scalar_t>
ForwardPtrs<scalar_t> forward_ptrs(const Prepared& p, const at::Tensor& y, const at::Tensor& arg) {
  return {p.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), arg.mutable_data_ptr<uint8_t>(),
          p.planes(), p.height, p.width};
}

template <typename scalar_t>
BackwardPtrs<scalar_t> backward_ptrs(const Prepared& p, const at::Tensor& grad_x) {
  return {p.grad_y.const_data_ptr<scalar_t>(), p.arg.const_data_ptr<uint8_t>(), grad_x.mutable_data_ptr<scalar_t>(),
          p.planes(), p.height, p.width};
}

}  // namespace median
}  // namespace fastrobust
