#pragma once
// The warp-level tensor-core instructions mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16} and
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 for the CPU emulator (reached through
// csrc/common/mma.cuh). Unlike wmma's fragments, their register layouts are documented (PTX
// ISA, "Matrix fragments for mma.m16n8k16 with floating point type" and "for mma.m16n8k8"), so
// kernels may read and write the accumulator's entries in registers. With g = lane / 4 and
// t = lane % 4, m16n8k16:
//   A (16 x 16, four 32-bit registers of two 16-bit values, the lower column in the low half):
//     a[0]: (g, 2t..2t+1)   a[1]: (g+8, 2t..2t+1)   a[2]: (g, 2t+8..2t+9)   a[3]: (g+8, 2t+8..2t+9)
//   B (16 x 8, two registers, the lower row in the low half):
//     b[0]: (2t..2t+1, g)   b[1]: (2t+8..2t+9, g)
//   C and D (16 x 8, four floats):
//     d[0], d[1]: (g, 2t), (g, 2t+1)   d[2], d[3]: (g+8, 2t), (g+8, 2t+1)
// m16n8k8 of tf32 values (each register one float whose 13 low mantissa bits are zero):
//   A (16 x 8): a[0]: (g, t)   a[1]: (g+8, t)   a[2]: (g, t+4)   a[3]: (g+8, t+4)
//   B (8 x 8):  b[0]: (t, g)   b[1]: (t+4, g)
//   C and D as above.
// All 32 lanes must call it at one place (synccheck). Each lane publishes where its registers
// are, the warp meets once, and the thread that completes the meeting decodes the 32 lanes'
// operands and forms every lane's four sums (float products and sums; the hardware's order of
// summation differs) before any lane goes on. Like the hardware instruction, it does not order
// memory between the lanes.
#ifndef FR_CUDA_EMULATION
#error "mma_emu.h is for the emulated build"
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "cuda_emu.h"

namespace fr_emu {

template <typename T>  // c10::Half or c10::BFloat16
float from_bits16(uint32_t bits) {
  return static_cast<float>(T(static_cast<uint16_t>(bits & 0xffffu), T::from_bits()));
}

// One lane's operands and accumulator, on its stack while the warp meets.
struct MmaLane {
  const uint32_t* a;
  const uint32_t* b;
  float* d;
};

// The product for the whole warp, run once by the thread that completes its meeting: all 32
// lanes must be there, from one call site (their keys in s.exchange); their operands are decoded
// once (Decode: a lane's registers into A and B), and each lane's four sums are written to its d.
template <int K, typename Decode>
void mma_m16n8_collective(unsigned warp) {
  BlockState& s = block_state();
  const unsigned base = warp * kWarp;
  std::string& error = s.warp_errors[warp];
  const char* name = K == 16 ? "mma.sync.m16n8k16" : "mma.sync.m16n8k8";
  for (unsigned l = 0; l < kWarp; ++l) {
    if (l >= s.warp_size(warp) || s.exited[base + l].load()) {
      error = missing_lanes_message(name, warp);
      return;
    }
    if (s.exchange[base + l] != s.exchange[base]) {
      error = mixed_operations_message(name, warp);
      return;
    }
  }
  float A[16][K], B[K][8];
  try {
    for (unsigned l = 0; l < kWarp; ++l) {
      const MmaLane& lane = *static_cast<const MmaLane*>(s.collective_args[base + l]);
      const uint32_t regs[6] = {lane.a[0], lane.a[1], lane.a[2], lane.a[3], lane.b[0], lane.b[1]};
      Decode{}(static_cast<int>(l / 4), static_cast<int>(l % 4), regs, A, B);
    }
  } catch (const std::exception& e) {
    error = e.what();
    return;
  }
  for (unsigned l = 0; l < kWarp; ++l) {
    float* d = static_cast<const MmaLane*>(s.collective_args[base + l])->d;
    const int g = static_cast<int>(l / 4), t = static_cast<int>(l % 4);
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float sum = d[i];
      for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
      d[i] = sum;
    }
  }
}

// The shared body of both shapes: the warp-wide check, then one meeting that does the product.
template <int K, typename Decode>
void mma_m16n8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* name, const char* file,
               int line, Decode) {
  check_full_warp(name, file, line);
  BlockState& s = block_state();
  const MmaLane mine{a, b, d};
  s.exchange[linear_tid] = call_site_key(file, line);
  s.collective_args[linear_tid] = &mine;
  warp_phase(false, &mma_m16n8_collective<K, Decode>);
  if (lane_id() == 0) note_mma(K / 2);  // 2 * 16 * 8 * K FLOPs: an m16n16 operation of depth K / 2
}

template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line) {
  mma_m16n8<16>(d, a, b, "mma.sync.m16n8k16", file, line,
                [](int g, int t, const uint32_t (&regs)[6], float (&A)[16][16], float (&B)[16][8]) {
                  for (int half = 0; half < 2; ++half) {
                    const int k = 2 * t + half;
                    const int shift = 16 * half;
                    A[g][k] = from_bits16<T>(regs[0] >> shift);
                    A[g + 8][k] = from_bits16<T>(regs[1] >> shift);
                    A[g][k + 8] = from_bits16<T>(regs[2] >> shift);
                    A[g + 8][k + 8] = from_bits16<T>(regs[3] >> shift);
                    B[k][g] = from_bits16<T>(regs[4] >> shift);
                    B[k + 8][g] = from_bits16<T>(regs[5] >> shift);
                  }
                });
}

// A tf32 operand register as a float: its 13 low mantissa bits must be zero (tf32_bits, mma.cuh).
inline float from_tf32_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  if ((bits & 0x1fffu) != 0 && std::isfinite(v))
    raise_sanitizer_error("emulated mma.sync.m16n8k8 tf32: an operand was not rounded to tf32 (value " +
                          std::to_string(v) + "); convert it with cvt.rna.tf32.f32 (tf32_bits)");
  return v;
}

inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file,
                             int line) {
  mma_m16n8<8>(d, a, b, "mma.sync.m16n8k8", file, line,
               [](int g, int t, const uint32_t (&regs)[6], float (&A)[16][8], float (&B)[8][8]) {
                 A[g][t] = from_tf32_bits(regs[0]);
                 A[g + 8][t] = from_tf32_bits(regs[1]);
                 A[g][t + 4] = from_tf32_bits(regs[2]);
                 A[g + 8][t + 4] = from_tf32_bits(regs[3]);
                 B[t][g] = from_tf32_bits(regs[4]);
                 B[t + 4][g] = from_tf32_bits(regs[5]);
               });
}

}  // namespace fr_emu
