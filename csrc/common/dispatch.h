#pragma once
// Static switches: turn a runtime value into a compile-time constant so that kernels can
// unroll their loops (the pattern of flash-attention's static_switch.h).
#include <c10/util/Exception.h>

// Calls the lambda with `constexpr int NAME` set to k, for the depthwise kernel sizes that
// have a compiled specialisation.
#define FR_KERNEL_SIZE_SWITCH(k, NAME, ...)                                                   \
  [&] {                                                                                       \
    switch (k) {                                                                              \
      case 1: { constexpr int NAME = 1; return __VA_ARGS__(); }                               \
      case 3: { constexpr int NAME = 3; return __VA_ARGS__(); }                               \
      case 5: { constexpr int NAME = 5; return __VA_ARGS__(); }                               \
      case 7: { constexpr int NAME = 7; return __VA_ARGS__(); }                               \
      default:                                                                                \
        TORCH_CHECK(false, "weight: kernel size ", k,                                         \
                    " has no device kernel; supported sizes are 1, 3, 5 and 7");              \
    }                                                                                         \
  }()
