#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
// a counter-based generator, so any element's random numbers are a pure function of
// (seed, offset, element index). The CPU kernels, the CUDA kernels and the emulator draw
// the same stream, and a kernel can regenerate a value instead of storing it (the L2
// random start reads its Gaussian twice: once for the row norm, once to write).
#include <cmath>
#include <cstdint>

#include "../common/macros.h"

namespace fastrobust {
namespace philox {

struct U32x4 {
  uint32_t v[4];
};

FR_HOST_DEVICE uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 on `counter` under `key`.
FR_HOST_DEVICE U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(kM0, c.v[0], &hi0);
    const uint32_t lo1 = mulhilo(kM1, c.v[2], &hi1);
    c = U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// The four 32-bit words of block `index` of the stream (seed, offset).
FR_HOST_DEVICE U32x4 block(uint64_t seed, uint64_t offset, uint64_t index) {
  const U32x4 counter{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  return philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// [0, 1) with 24 random bits (exact in float).
FR_HOST_DEVICE float to_unit(uint32_t bits) { return static_cast<float>(bits >> 8) * 0x1p-24f; }

// Element i of the stream as U[0, 1): word i % 4 of block i / 4.
FR_HOST_DEVICE float uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return to_unit(block(seed, offset, i >> 2).v[i & 3]);
}

// Element i of the stream as N(0, 1): Box-Muller on the word pairs of block i / 4.
FR_HOST_DEVICE float normal(uint64_t seed, uint64_t offset, uint64_t i) {
  const U32x4 b = block(seed, offset, i >> 2);
  const int pair = static_cast<int>(i & 2);
  const float u1 = to_unit(b.v[pair]) + 0x1p-24f;  // (0, 1]: log stays finite
  const float u2 = to_unit(b.v[pair + 1]);
  const float radius = std::sqrt(-2.0f * std::log(u1));
  const float angle = 6.2831853071795864769f * u2;
  return (i & 1) ? radius * std::sin(angle) : radius * std::cos(angle);
}

}  // namespace philox
}  // namespace fastrobust
