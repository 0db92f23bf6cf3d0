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
#include <limits>

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
  // to degree 7 (truncation error < 4e-9 relative, under one float ulp). The polynomial runs on
  // x clamped to [ln(FLT_MIN), 88] so that 2^n stays a normal float; below that range the
  // result is 0 (exp(-inf) = 0 exactly; results that would be subnormal flush to 0), above
  // ln(FLT_MAX) it is +inf (between 88 and ln(FLT_MAX) it saturates at exp(88) = 1.65e38);
  // NaN stays NaN. The selects keep the loop branch-free.
  static inline float exp(float x) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kLn2Hi = 0.693359375f;          // ln2 split so n * kLn2Hi is exact
    constexpr float kLn2Lo = -2.12194440e-4f;
    constexpr float kRound = 12582912.0f;           // 1.5 * 2^23: adding it rounds to an integer
    constexpr float kLowest = -87.33654475f;        // ln(FLT_MIN): 2^n is still a normal float
    constexpr float kOverflow = 88.72283905f;       // ln(FLT_MAX)
    const float x_in = x;
    x = std::min(std::max(x, kLowest), 88.0f);
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
    const float out = x_in < kLowest ? 0.0f : p * scale;
    return x_in > kOverflow ? std::numeric_limits<float>::infinity() : out;
  }
  // double is the gradcheck dtype, not a speed path.
  static inline double exp(double x) { return std::exp(x); }
};

}  // namespace math
}  // namespace fastrobust
