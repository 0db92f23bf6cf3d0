#pragma once
// Helpers for CPU kernels whose inner loops the compiler vectorises.
//
// FR_CPU_MULTIVERSION compiles a function for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and
// the baseline, and picks one when the library loads (GCC/Clang function multiversioning),
// so the package stays portable while running 8- or 16-wide where the CPU allows: on the
// baseline SSE2 target the Sparta maths ran about 10x slower than with AVX-512.
// Mark the outermost per-work-item function with it; what it calls inline is compiled
// into each clone.
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FR_DEBUG)
#define FR_CPU_MULTIVERSION __attribute__((flatten)) \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FR_CPU_MULTIVERSION
#endif

namespace fastrobust {
namespace cpu {

// A sum kept in kLanes independent partial sums: a reduction into one float would need
// reassociation (-ffast-math) to vectorise; this shape does not. Keep one Lanes across many
// short rows and read total() once: the horizontal sum is the expensive part.
constexpr int kLanes = 16;

template <typename acc>
struct Lanes {
  acc lane[kLanes] = {};
  acc rest = acc(0);

  // += sum(a[i] * b[i]) for i < n
  inline void add_dot(const acc* __restrict__ a, const acc* __restrict__ b, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] += a[i + l] * b[i + l];
    for (; i < n; ++i) rest += a[i] * b[i];
  }
  // += sum(a[i]) for i < n
  inline void add(const acc* __restrict__ a, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] += a[i + l];
    for (; i < n; ++i) rest += a[i];
  }
  inline acc total() const {
    acc s = rest;
    for (int l = 0; l < kLanes; ++l) s += lane[l];
    return s;
  }
};

// Type conversion of n values in loops the compiler vectorises. c10::BFloat16's own
// conversions are per element through a branch on NaN and keep a loop scalar (the CIFS
// backward spent most of its bfloat16 time converting, at twice the float32 time); here
// bfloat16 goes through its bits, rounding to nearest even like c10 (NaN becomes 0x7FC0), so
// the values are exactly those of static_cast. Other pairs of types use static_cast.
inline float bfloat16_bits_to_float(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t float_to_bfloat16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return f != f ? uint16_t(0x7FC0) : uint16_t(rounded);
}

template <typename from_t, typename to_t>
inline void convert(const from_t* __restrict__ in, to_t* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<to_t>(in[i]);
}

inline void convert(const c10::BFloat16* __restrict__ in, float* __restrict__ out, int64_t n) {
  const uint16_t* __restrict__ bits = reinterpret_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < n; ++i) out[i] = bfloat16_bits_to_float(bits[i]);
}

inline void convert(const float* __restrict__ in, c10::BFloat16* __restrict__ out, int64_t n) {
  uint16_t* __restrict__ bits = reinterpret_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) bits[i] = float_to_bfloat16_bits(in[i]);
}

}  // namespace cpu
}  // namespace fastrobust
