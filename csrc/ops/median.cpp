#include "median.h"

#include <torch/library.h>

#include "../common/checks.h"

namespace fastrobust {
namespace median {

Prepared prepare(const at::Tensor& x) {
  FR_CHECK_DIM(x, "x", 4);
  FR_CHECK_FLOATING(x, "x");
  Prepared p;
  p.x = x.contiguous();
  p.batch = x.size(0);
  p.channels = x.size(1);
  p.height = x.size(2);
  p.width = x.size(3);
  return p;
}

Prepared prepare_backward(const at::Tensor& grad_y, const at::Tensor& arg, ValueChecks checks) {
  FR_CHECK_DIM(grad_y, "grad_y", 4);
  FR_CHECK_FLOATING(grad_y, "grad_y");
  FR_CHECK(arg.scalar_type() == at::kByte, "arg must have dtype uint8 (the window positions median3x3 returns), got ",
           arg.scalar_type());
  FR_CHECK_SAME_DEVICE(arg, "arg", grad_y, "grad_y");
  FR_CHECK(grad_y.sizes() == arg.sizes(), "grad_y must have the shape of arg (", arg.sizes(), "), got ",
           grad_y.sizes());
  Prepared p;
  p.grad_y = grad_y.contiguous();
  p.arg = arg.contiguous();
  if (checks == ValueChecks::kHost && arg.device().is_cpu() && arg.numel() > 0) {
    const int64_t largest = p.arg.max().item<int64_t>();
    FR_CHECK(largest < kWindow, "arg must hold window positions in [0, ", kWindow, ") as median3x3 returns them, got ",
             largest);
  }
  p.batch = grad_y.size(0);
  p.channels = grad_y.size(1);
  p.height = grad_y.size(2);
  p.width = grad_y.size(3);
  return p;
}

}  // namespace median

TORCH_LIBRARY_FRAGMENT(fastrobust, m) {
  m.def(kMedian3x3Schema);
  m.def(kMedian3x3BackwardSchema);
}

}  // namespace fastrobust
