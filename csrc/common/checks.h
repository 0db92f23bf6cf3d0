#pragma once
// Input checks whose messages name the argument, what was expected and what was given.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define FR_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)

#define FR_CHECK_DIM(t, name, n)                                                              \
  TORCH_CHECK((t).dim() == (n), name, " must be a ", n, "-D tensor, got ", (t).dim(),       \
              "-D with shape ", (t).sizes())

#define FR_CHECK_FLOATING(t, name)                                                            \
  TORCH_CHECK(at::isFloatingType((t).scalar_type()), name,                                    \
              " must have a floating-point dtype, got ", (t).scalar_type())

#define FR_CHECK_SAME_DTYPE(t, name, ref, ref_name)                                           \
  TORCH_CHECK((t).scalar_type() == (ref).scalar_type(), name, " must have the dtype of ",     \
              ref_name, " (", (ref).scalar_type(), "), got ", (t).scalar_type())

#define FR_CHECK_SAME_DEVICE(t, name, ref, ref_name)                                          \
  TORCH_CHECK((t).device() == (ref).device(), name, " must be on the device of ", ref_name,   \
              " (", (ref).device(), "), got ", (t).device())

#define FR_CHECK_SHAPE(t, name, ...)                                                          \
  TORCH_CHECK((t).sizes() == at::IntArrayRef({__VA_ARGS__}), name, " must have shape ",       \
              at::IntArrayRef({__VA_ARGS__}), ", got ", (t).sizes())

namespace fastrobust {

// Where the value checks of tensor arguments (signs, finiteness, index ranges) run. The CPU
// backend reads the values on the host. The CUDA backend (and the emulator, which runs its
// code) checks them in the kernels with FR_DEVICE_ASSERT: a host check would synchronise with
// the device on every call and break CUDA-graph capture.
enum class ValueChecks { kHost, kDevice };

}  // namespace fastrobust
