#pragma once
// The tensor-core instructions mma.sync m16n8k16 (16-bit inputs) and m16n8k8 (tf32 inputs), float
// accumulators, for device code, in both builds: inline PTX under nvcc (sm_80 and newer,
// FR_HAS_WMMA), csrc/emu/mma_emu.h in the emulator. Their register layouts are documented
// (mma_emu.h gives them), so a kernel can keep accumulators in registers and rescale their rows
// there, and reuse a product's accumulators as the A operand of the next product
// (FlashAttention's P V), which wmma's unspecified fragment layout does not allow.
//
// 16-bit operands are 32-bit registers of two values, the lower index in the low half:
// pack_pair rounds two floats to scalar_t, shared_pair reads two adjacent elements of shared
// memory (an even index: one 32-bit load on the GPU, two checked 16-bit reads in the emulator).
// tf32 operands are floats rounded to 10-bit mantissas (tf32_bits: cvt.rna.tf32.f32, to
// nearest, ties away from zero): the instruction's result is undefined on other values, and the
// emulator refuses them.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_utils.cuh"
#include "wmma.cuh"  // FR_HAS_WMMA

#if defined(FR_CUDA_EMULATION)
#include "../emu/mma_emu.h"
#endif

namespace fastrobust {

template <typename scalar_t>
constexpr bool kMmaInput = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

template <typename scalar_t>
__device__ __forceinline__ uint32_t bits_of(scalar_t v) {
  static_assert(kMmaInput<scalar_t>, "mma m16n8k16 takes fp16 or bf16 inputs");
  return static_cast<uint32_t>(v.x);
}

// Two floats rounded to scalar_t, lo in the low half.
template <typename scalar_t>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  return bits_of(static_cast<scalar_t>(lo)) | (bits_of(static_cast<scalar_t>(hi)) << 16);
}

// Two 16-bit values that lie in different rows of a shared tile.
template <typename scalar_t>
__device__ __forceinline__ uint32_t pack_pair(scalar_t lo, scalar_t hi) {
  return bits_of(lo) | (bits_of(hi) << 16);
}

// p[i] and p[i + 1] of a shared tile, i even (so 4-byte aligned where p is).
template <typename scalar_t>
__device__ __forceinline__ uint32_t shared_pair(smem_ptr<scalar_t> p, int i) {
#if defined(FR_CUDA_EMULATION)
  return pack_pair(static_cast<scalar_t>(p[i]), static_cast<scalar_t>(p[i + 1]));
#else
  return *reinterpret_cast<const uint32_t*>(p + i);
#endif
}

// p[i] and p[i + 1] of a float tile, i even: one 8-byte access (8-byte aligned where p is).
__device__ __forceinline__ void shared_float_pair(smem_ptr<float> p, int i, float& lo, float& hi) {
#if defined(FR_CUDA_EMULATION)
  float pair[2];
  (p + i).load_bytes(pair, sizeof pair);
  lo = pair[0];
  hi = pair[1];
#else
  const float2 pair = *reinterpret_cast<const float2*>(p + i);
  lo = pair.x;
  hi = pair.y;
#endif
}

// p[i] = lo and p[i + 1] = hi in a float tile, i even: one 8-byte access.
__device__ __forceinline__ void store_shared_float_pair(smem_ptr<float> p, int i, float lo, float hi) {
#if defined(FR_CUDA_EMULATION)
  const float pair[2] = {lo, hi};
  (p + i).store_bytes(pair, sizeof pair);
#else
  *reinterpret_cast<float2*>(p + i) = make_float2(lo, hi);
#endif
}

#if FR_HAS_WMMA
// v rounded to tf32, as the 32-bit register an m16n8k8 tf32 operand takes.
__device__ __forceinline__ uint32_t tf32_bits(float v) {
#if defined(FR_CUDA_EMULATION)
  const float r = nvcuda::wmma::__float_to_tf32(v);
  uint32_t bits;
  std::memcpy(&bits, &r, sizeof bits);
  return bits;
#else
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(v));
  return bits;
#endif
}

// d += A (16 x 8) B (8 x 8) of tf32 values for the calling warp (layout: mma_emu.h).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
#if defined(FR_CUDA_EMULATION)
  ::fr_emu::mma_m16n8k8_tf32(d, a, b, file, line);
#else
  (void)file;
  (void)line;
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// d += A (16 x 16) B (16 x 8) for the calling warp, every lane with its share of the registers.
template <typename scalar_t>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(kMmaInput<scalar_t>, "mma m16n8k16 takes fp16 or bf16 inputs");
#if defined(FR_CUDA_EMULATION)
  ::fr_emu::mma_m16n8k16<scalar_t>(d, a, b, file, line);
#else
  (void)file;
  (void)line;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}
#endif

}  // namespace fastrobust
