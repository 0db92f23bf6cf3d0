#pragma once
// Sparta-style spatially gated ReLU, per-element maths shared by the CPU and CUDA kernels.
//   z = dwconv_k(x) + b,  a = sigmoid(z),  y = relu(x) * 2a
// Backward, for an upstream gradient gy at one position:
//   dL/dx (direct path)  = gy * 2a        where x > 0, else 0
//   dL/dz (gate path)    = gy * 2x a(1-a) where x > 0, else 0
// dL/dz then flows to the conv: weight and bias gradients, and x again through the
// transposed depthwise conv (done by the callers, which know the layout).
#include <cmath>

#include "../common/macros.h"

namespace fastrobust {
namespace sparta {

template <typename T>
FR_HOST_DEVICE T sigmoid(T z) {
  // exp(-z) overflows to +inf for very negative z, and 1/(1+inf) = 0 is the right limit.
  using std::exp;  // the float overload for float, on host and device
  return T(1) / (T(1) + exp(-z));
}

template <typename T>
FR_HOST_DEVICE T forward(T x, T z) {
  return x > T(0) ? T(2) * x * sigmoid(z) : T(0);
}

template <typename T>
struct Grads {
  T dx;  // direct path through relu(x)
  T dz;  // into the gate's pre-activation
};

template <typename T>
FR_HOST_DEVICE Grads<T> backward(T x, T z, T gy) {
  if (!(x > T(0))) return {T(0), T(0)};
  const T a = sigmoid(z);
  const T two_a_gy = T(2) * a * gy;
  return {two_a_gy, two_a_gy * x * (T(1) - a)};
}

}  // namespace sparta
}  // namespace fastrobust
