#pragma once
// Helpers for CPU kernels whose inner loops the compiler vectorises.
//
// FR_CPU_MULTIVERSION compiles a function for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and
// the baseline, and picks one when the library loads (GCC/Clang function multiversioning),
// so the package stays portable while running 8- or 16-wide where the CPU allows: on the
// baseline SSE2 target the Sparta maths ran about 10x slower than with AVX-512.
// Mark the outermost per-work-item function with it; what it calls inline is compiled
// into each clone.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FR_DEBUG)
#define FR_CPU_MULTIVERSION __attribute__((flatten)) \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FR_CPU_MULTIVERSION
#endif

namespace fastrobust {
namespace cpu {

// Sums over kLanes independent partial sums: a reduction into one float would need
// reassociation (-ffast-math) to vectorise; this shape does not.
constexpr int kLanes = 16;

template <typename acc>
inline acc dot(const acc* __restrict__ a, const acc* __restrict__ b, int64_t n) {
  acc part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += a[i + l] * b[i + l];
  acc s = acc(0);
  for (; i < n; ++i) s += a[i] * b[i];
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

template <typename acc>
inline acc sum(const acc* __restrict__ a, int64_t n) {
  acc part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) part[l] += a[i + l];
  acc s = acc(0);
  for (; i < n; ++i) s += a[i];
  for (int l = 0; l < kLanes; ++l) s += part[l];
  return s;
}

}  // namespace cpu
}  // namespace fastrobust
