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

}  // namespace cpu
}  // namespace fastrobust
