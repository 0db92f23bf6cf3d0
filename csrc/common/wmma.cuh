#pragma once
// Warp matrix (tensor core) operations for device code, in both builds: CUDA's <mma.h> under
// nvcc, csrc/emu/wmma_emu.h in the emulator. Only m16n16k16 with 16-bit inputs and float
// accumulators, which needs compute capability 8.0 (bf16) or 7.0 (fp16): kernels that use it
// compile their bodies for FR_WMMA_ARCH only (see FR_HAS_WMMA) and hosts pick them at run time.
#include "cuda_utils.cuh"

#if defined(FR_CUDA_EMULATION)
#include "../emu/wmma_emu.h"
#define FR_HAS_WMMA 1
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
// Device passes for sm_80 and newer (and the host pass, which never runs device bodies).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define FR_HAS_WMMA 1
#else
#define FR_HAS_WMMA 0
#endif
#endif

namespace fastrobust {

namespace wmma = ::nvcuda::wmma;
constexpr int kWmmaDim = 16;  // m = n = k

// The element type the wmma fragments take for a tensor scalar type: c10::Half and
// c10::BFloat16 share the bit layout of CUDA's __half and __nv_bfloat16, so shared memory
// staged as the c10 type is read through a cast of the pointer.
template <typename scalar_t> struct wmma_element;
#if defined(FR_CUDA_EMULATION)
template <> struct wmma_element<c10::Half> { using type = c10::Half; };
template <> struct wmma_element<c10::BFloat16> { using type = c10::BFloat16; };
#else
template <> struct wmma_element<c10::Half> { using type = __half; };
template <> struct wmma_element<c10::BFloat16> { using type = __nv_bfloat16; };
#endif

template <typename scalar_t>
__device__ __forceinline__ const typename wmma_element<scalar_t>::type* as_wmma(const scalar_t* p) {
  return reinterpret_cast<const typename wmma_element<scalar_t>::type*>(p);
}
#if defined(FR_CUDA_EMULATION)
// Shared memory in the emulator: the element types are the same there, the pointer stays checked.
template <typename scalar_t>
::fr_emu::SharedPtr<const scalar_t> as_wmma(::fr_emu::SharedPtr<scalar_t> p) {
  return p;
}
#endif

}  // namespace fastrobust
