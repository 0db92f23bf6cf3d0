#pragma once
// Warp matrix (tensor core) operations for device code, in both builds: CUDA's <mma.h> under
// nvcc, csrc/emu/wmma_emu.h in the emulator. m16n16k16 with 16-bit inputs and m16n16k8 with
// tf32 inputs (fp32 tensors), float accumulators, which needs compute capability 8.0 (bf16,
// tf32) or 7.0 (fp16): kernels that use it compile their bodies for sm_80 and newer only (see
// FR_HAS_WMMA) and hosts pick them at run time.
#include <type_traits>

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
constexpr int kWmmaDim = 16;  // m = n (and k for 16-bit inputs)

// The fragments for a tensor scalar type: their element type, their depth k, and how a loaded
// input fragment becomes a product's operand.
//   - c10::Half and c10::BFloat16 share the bit layout of CUDA's __half and __nv_bfloat16, so
//     shared memory staged as the c10 type is read through a cast of the pointer; k = 16.
//   - float runs as tf32 (8-bit exponent, 10-bit mantissa), k = 8: its fragments load floats
//     and round each to tf32 (__float_to_tf32, as the hardware takes only converted values).
template <typename scalar_t> struct wmma_element;
#if defined(FR_CUDA_EMULATION)
template <> struct wmma_element<c10::Half> { using type = c10::Half; };
template <> struct wmma_element<c10::BFloat16> { using type = c10::BFloat16; };
#else
template <> struct wmma_element<c10::Half> { using type = __half; };
template <> struct wmma_element<c10::BFloat16> { using type = __nv_bfloat16; };
#endif
#if FR_HAS_WMMA  // (tf32 is declared for sm_80 and newer only)
template <> struct wmma_element<float> { using type = wmma::precision::tf32; };
#endif

template <typename scalar_t>
constexpr int kWmmaDepth = std::is_same_v<scalar_t, float> ? 8 : kWmmaDim;

template <typename scalar_t>
using WmmaAcc = wmma::fragment<wmma::accumulator, kWmmaDim, kWmmaDim, kWmmaDepth<scalar_t>, float>;
template <typename scalar_t, typename Layout>
using WmmaA = wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDepth<scalar_t>,
                             typename wmma_element<scalar_t>::type, Layout>;
template <typename scalar_t, typename Layout>
using WmmaB = wmma::fragment<wmma::matrix_b, kWmmaDim, kWmmaDim, kWmmaDepth<scalar_t>,
                             typename wmma_element<scalar_t>::type, Layout>;

// The pointer a fragment of scalar_t loads from: the CUDA type for 16-bit values, float for tf32.
template <typename scalar_t>
using wmma_load_t = std::conditional_t<std::is_same_v<scalar_t, float>, float, typename wmma_element<scalar_t>::type>;

template <typename scalar_t>
__device__ __forceinline__ const wmma_load_t<scalar_t>* as_wmma(const scalar_t* p) {
  return reinterpret_cast<const wmma_load_t<scalar_t>*>(p);
}
#if defined(FR_CUDA_EMULATION)
// Shared memory in the emulator: the element types are the same there, the pointer stays checked.
template <typename scalar_t>
::fr_emu::SharedPtr<const scalar_t> as_wmma(::fr_emu::SharedPtr<scalar_t> p) {
  return p;
}
#endif

#if FR_HAS_WMMA
// An input fragment loaded from memory, made ready for mma_sync: tf32 fragments rounded.
template <typename scalar_t, typename Frag, typename P>
__device__ __forceinline__ void load_operand(Frag& f, const P& p, unsigned ldm) {
  wmma::load_matrix_sync(f, p, ldm);
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
  }
}
#endif

}  // namespace fastrobust
