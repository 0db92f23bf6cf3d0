#pragma once
// Sparta-style spatially gated ReLU, per-element maths shared by the CPU and CUDA kernels.
//   z = dwconv_k(x) + b,  a = sigmoid(z),  y = relu(x) * 2a
// Backward, for an upstream gradient gy at one position:
//   dL/dx (direct path)  = gy * 2a * [x > 0]
//   dL/dz (gate path)    = gy * 2a * relu(x) * (1 - a)
// dL/dz then flows to the conv: weight and bias gradients, and x again through the
// transposed depthwise conv (done by the callers, which know the layout).
// Written without branches so that CPU loops over these functions vectorise.
#include "../common/macros.h"
#include "math.h"

namespace fastrobust {
namespace sparta {

template <typename T>
FR_HOST_DEVICE T relu(T x) {
  return x > T(0) ? x : T(0);
}

template <typename T>
FR_HOST_DEVICE T step(T x) {
  return x > T(0) ? T(1) : T(0);
}

template <typename T, typename Exp = math::StdExp>
FR_HOST_DEVICE T sigmoid(T z) {
  // exp(-z) overflows to +inf for very negative z, and 1/(1+inf) = 0 is the right limit.
  return T(1) / (T(1) + Exp::exp(-z));
}

template <typename T, typename Exp = math::StdExp>
FR_HOST_DEVICE T forward(T x, T z) {
  return T(2) * relu(x) * sigmoid<T, Exp>(z);
}

template <typename T>
struct Grads {
  T dx;  // direct path through relu(x)
  T dz;  // into the gate's pre-activation
};

template <typename T, typename Exp = math::StdExp>
FR_HOST_DEVICE Grads<T> backward(T x, T z, T gy) {
  const T a = sigmoid<T, Exp>(z);
  const T two_a_gy = T(2) * a * gy;
  return {two_a_gy * step(x), two_a_gy * relu(x) * (T(1) - a)};
}

}  // namespace sparta
}  // namespace fastrobust
