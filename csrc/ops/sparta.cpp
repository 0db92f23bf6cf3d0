#include "sparta.h"

#include <torch/library.h>

#include "../common/checks.h"

namespace fastrobust {

void check_sparta_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  FR_CHECK_DIM(x, "x", 4);
  FR_CHECK_FLOATING(x, "x");
  FR_CHECK_DIM(weight, "weight", 4);
  FR_CHECK_SAME_DTYPE(weight, "weight", x, "x");
  FR_CHECK_SAME_DTYPE(bias, "bias", x, "x");
  FR_CHECK_SAME_DEVICE(weight, "weight", x, "x");
  FR_CHECK_SAME_DEVICE(bias, "bias", x, "x");
  const int64_t channels = x.size(1);
  const int64_t k = weight.size(2);
  FR_CHECK(weight.size(0) == channels && weight.size(1) == 1 && weight.size(3) == k,
           "weight must have shape (C, 1, k, k) = (", channels, ", 1, k, k) for x with ",
           channels, " channels, got ", weight.sizes());
  FR_CHECK(k % 2 == 1, "weight: kernel size must be odd (same padding k//2), got ", k);
  FR_CHECK_SHAPE(bias, "bias", channels);
}

void check_sparta_backward_args(const at::Tensor& grad_y, const at::Tensor& x,
                                const at::Tensor& weight, const at::Tensor& bias) {
  check_sparta_args(x, weight, bias);
  FR_CHECK(grad_y.sizes() == x.sizes(), "grad_y must have the shape of x (", x.sizes(),
           "), got ", grad_y.sizes());
  FR_CHECK_SAME_DTYPE(grad_y, "grad_y", x, "x");
  FR_CHECK_SAME_DEVICE(grad_y, "grad_y", x, "x");
}

TORCH_LIBRARY_FRAGMENT(fastrobust, m) {
  m.def(kSpartaSchema);
  m.def(kSpartaBackwardSchema);
}

}  // namespace fastrobust
