#pragma once
// Tools of the element-wise kernels: 16-byte packs of elements (one vector load or store per
// thread instead of several scalar ones) and a divider that finds an element's row by a
// multiply-high and a shift instead of a 64-bit division.
#include <cstdint>

#include "cuda_utils.cuh"

namespace fastrobust {

// N consecutive elements moved by one access (16 bytes for N = kPackOf<T>).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements of T in a 16-byte access.
template <typename T>
constexpr int kPackOf = static_cast<int>(16 / sizeof(T));

// A null pointer (an absent optional input) never blocks the packed path.
inline bool aligned_for_pack(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ uint32_t mul_hi(uint32_t a, uint32_t b) {
#if defined(FR_CUDA_EMULATION)
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#else
  return __umulhi(a, b);
#endif
}

// i / divisor for 0 <= i: with shift = ceil(log2 divisor) and
// magic = floor(2^32 (2^shift - divisor) / divisor) + 1 (found once, on the host),
// i / divisor = (mul_hi(i, magic) + i) >> shift for i, divisor < 2^31 (Granlund and
// Montgomery's round-up method); larger values take the plain division.
struct RowDivider {
  int64_t divisor;
  uint32_t magic, shift;

  explicit RowDivider(int64_t d) : divisor(d), magic(0), shift(0) {
    TORCH_CHECK(d > 0, "RowDivider: divisor must be positive, got ", d);
    while (shift < 32 && (uint64_t(1) << shift) < static_cast<uint64_t>(d)) ++shift;
    if (d < (int64_t(1) << 31))
      magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }

  __device__ __forceinline__ int64_t of(int64_t i) const {
    constexpr int64_t kFast = int64_t(1) << 31;
    if (i >= kFast || divisor >= kFast) return i / divisor;
    const uint32_t n = static_cast<uint32_t>(i);
    return static_cast<int64_t>((mul_hi(n, magic) + n) >> shift);
  }
};

}  // namespace fastrobust
