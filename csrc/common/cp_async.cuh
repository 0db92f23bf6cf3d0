#pragma once
// Asynchronous global -> shared copies (cp.async, sm_80 and newer: FR_HAS_WMMA) for device code,
// in both builds: inline PTX under nvcc, csrc/emu/cp_async_emu.h in the emulator.
//   cp_async_16(dst, src, src_bytes): 16 bytes from src (global) to dst (shared), both 16-byte
//     aligned; the bytes past src_bytes (0..16) are zeros, and src is not read when it is 0;
//   cp_async_commit(): closes the thread's group of copies issued since the last commit;
//   cp_async_wait<N>(): returns once at most the newest N of the thread's groups are pending.
// A copy is visible to its own thread after the wait, to the block after a __syncthreads()
// that follows the waits of every thread that copied.
#include <cstdint>

#include "cuda_utils.cuh"
#include "wmma.cuh"  // FR_HAS_WMMA

#if defined(FR_CUDA_EMULATION)
#include "../emu/cp_async_emu.h"
#endif

namespace fastrobust {

#if FR_HAS_WMMA
template <typename T>
__device__ __forceinline__ void cp_async_16(smem_ptr<T> dst, FR_GLOBAL(const T) src, int src_bytes) {
#if defined(FR_CUDA_EMULATION)
  ::fr_emu::cp_async_16(dst, src.get(), src_bytes);
#else
  const uint32_t to = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(src), "r"(src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(FR_CUDA_EMULATION)
  ::fr_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(FR_CUDA_EMULATION)
  ::fr_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
#endif

}  // namespace fastrobust
