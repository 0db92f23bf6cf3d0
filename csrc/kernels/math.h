#pragma once
// exp policies for the per-element maths of csrc/kernels/*.h.
//   StdExp  the standard exp (CUDA's accurate expf on the device; the emulator mirrors it);
//   PolyExp for CPU loops: range reduction and a polynomial with no calls and no branches,
//           so that the compiler vectorises the loop (std::exp stays scalar at the baseline
//           x86-64 target without -ffast-math, and was most of the CPU kernels' time).
// The policy is a template argument of the maths, so the CPU and the emulated builds of
// one function have different names and never clash in the shared library.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/macros.h"

namespace fastrobust {
namespace math {

struct StdExp {
  template <typename T>
  FR_HOST_DEVICE static T exp(T x) {
    using std::exp;
    return exp(x);
  }
};

struct PolyExp {
  // exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2, exp(r) by its Taylor series
  // to degree 7 (truncation error < 4e-9 relative, under one float ulp). x is clamped to
  // [-87, 88] so that 2^n stays a normal float: results saturate at about 1.6e-38 and 1.7e38.
  static inline float exp(float x) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kLn2Hi = 0.693359375f;          // ln2 split so n * kLn2Hi is exact
    constexpr float kLn2Lo = -2.12194440e-4f;
    constexpr float kRound = 12582912.0f;           // 1.5 * 2^23: adding it rounds to an integer
    x = std::min(std::max(x, -87.0f), 88.0f);
    // t = n + kRound holds the integer n in its low mantissa bits; reading n from there
    // (instead of a float-to-int conversion, which GCC guards with a branch under strict
    // FP semantics) keeps the loop vectorisable.
    const float t = x * kLog2e + kRound;
    const float n = t - kRound;
    const float r = (x - n * kLn2Hi) - n * kLn2Lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t t_bits, round_bits;
    std::memcpy(&t_bits, &t, sizeof(t));
    std::memcpy(&round_bits, &kRound, sizeof(kRound));
    const int32_t bits = (t_bits - round_bits + 127) << 23;  // 2^n as a float's bits
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
  }
  // double is the gradcheck dtype, not a speed path.
  static inline double exp(double x) { return std::exp(x); }
};

}  // namespace math
}  // namespace fastrobust
