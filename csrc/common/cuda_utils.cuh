#pragma once
// What every csrc/cuda/*_kernels.cuh needs, for both builds of device code:
//   - nvcc: real CUDA;
//   - g++ with FR_CUDA_EMULATION defined: csrc/emu/cuda_emu.h runs the same code on the CPU.
// Device code must reach the CUDA runtime only through the names defined here or in the
// emulator (FR_LAUNCH, FR_SHARED, FR_DYNAMIC_SMEM, __syncthreads, shuffles, atomicAdd).
// Shared arrays are declared with FR_SHARED(type, name, count) (FR_SHARED_ALIGNED for an
// alignment), never with __shared__: in the emulator they are checked storage of the running
// block; under nvcc they are plain __shared__ arrays.
//
// FR_COUNT_FMA(n) declares that the calling thread does n multiply-adds here (in the loop it
// follows or precedes): the emulator's cost model counts them as SIMT FLOPs; on a GPU it is
// nothing.
//
// FR_DEVICE_ASSERT(cond, msg) checks a value that only the device sees (an eps tensor, a label)
// without a host sync: on a GPU it is CUDA's device-side assert (the kernel traps, the next
// CUDA call reports "device-side assert triggered", msg goes to stderr); in the emulator the
// launch throws a RuntimeError with msg, so the tests see the same check fire.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <c10/util/Exception.h>

#include <cstdint>

#include "macros.h"

#if defined(FR_CUDA_EMULATION)
#include "../emu/cuda_emu.h"
// Kernels and their host launchers live in a namespace per build, so that the emulated and
// the real instantiations can sit in the same shared library.
#define FR_KERNEL_NS emu
#define FR_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::fr_emu::launch(#kernel, kernel, grid, block, smem_bytes, __VA_ARGS__)
#define FR_DYNAMIC_SMEM(type, name) const ::fr_emu::SharedPtr<type> name = ::fr_emu::dynamic_shared<type>()
// Lets kernel's launches take up to `bytes` of dynamic shared memory, over the 48 KiB a block gets
// without it (cudaFuncAttributeMaxDynamicSharedMemorySize; the emulator applies the same limits).
#define FR_OPT_IN_DYNAMIC_SMEM(kernel, bytes) ::fr_emu::opt_in_dynamic_smem(#kernel, kernel, bytes)
#define FR_SHARED(type, name, ...)                                         \
  static ::fr_emu::SharedArray<type, (__VA_ARGS__)> name##_fr_storage_(#name); \
  const ::fr_emu::SharedPtr<type> name = name##_fr_storage_.begin()
#define FR_SHARED_ALIGNED(align, type, name, ...) FR_SHARED(type, name, __VA_ARGS__)  // storage is 64-byte aligned
// A pointer to global memory whose accesses the cost model counts (csrc/emu/cost_model.h);
// FR_GLOBAL_RESTRICT for a kernel parameter that is __restrict__ on the GPU.
#define FR_GLOBAL(type) ::fr_emu::GlobalPtr<type>
#define FR_GLOBAL_RESTRICT(type) ::fr_emu::GlobalPtr<type>
#define FR_COUNT_FMA(n) ::fr_emu::note_fma(static_cast<uint64_t>(n))
#define FR_DEVICE_ASSERT(cond, msg)                                            \
  do {                                                                         \
    if (!(cond)) ::fr_emu::device_assert_failed(msg, __FILE__, __LINE__);      \
  } while (0)
#elif defined(__CUDACC__)
#define FR_KERNEL_NS cuda
#define FR_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)            \
  do {                                                                     \
    kernel<<<grid, block, smem_bytes, stream>>>(__VA_ARGS__);              \
    ::fastrobust::check_launch(cudaGetLastError(), #kernel);               \
  } while (0)
#define FR_DYNAMIC_SMEM(type, name)                                 \
  extern __shared__ __align__(16) unsigned char fr_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(fr_dynamic_smem_)
#define FR_OPT_IN_DYNAMIC_SMEM(kernel, bytes)                                                              \
  ::fastrobust::check_launch(                                                                            \
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)), \
      #kernel)
#define FR_SHARED(type, name, ...) __shared__ type name[__VA_ARGS__]
#define FR_SHARED_ALIGNED(align, type, name, ...) __shared__ __align__(align) type name[__VA_ARGS__]
#define FR_GLOBAL(type) type*
#define FR_GLOBAL_RESTRICT(type) type* __restrict__
#define FR_COUNT_FMA(n) ((void)0)
#define FR_DEVICE_ASSERT(cond, msg) \
  do {                              \
    CUDA_KERNEL_ASSERT_MSG(cond, msg) \
  } while (0)
#else
#error "cuda_utils.cuh needs nvcc, or FR_CUDA_EMULATION for the CPU emulator"
#endif

namespace fastrobust {

// What a shared array decays to: T* on the GPU; in the emulator a checked pointer whose
// accesses are checked for races and reads of unwritten memory (csrc/emu/shared_memory.h).
// Device functions that take shared memory take smem_ptr<T>.
#if defined(FR_CUDA_EMULATION)
template <typename T>
using smem_ptr = ::fr_emu::SharedPtr<T>;
#else
template <typename T>
using smem_ptr = T*;
#endif

#if defined(__CUDACC__) && !defined(FR_CUDA_EMULATION)
inline void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, "CUDA launch of ", kernel, " failed: ", cudaGetErrorString(err));
}
#endif

// Accumulation type: fp32 for the 16-bit types and for float, double for double.
template <typename T> struct acc_type { using type = float; };
template <> struct acc_type<double> { using type = double; };
template <typename T> using acc_t = typename acc_type<T>::type;

constexpr int kWarpSize = 32;

template <typename T>
__host__ __device__ __forceinline__ T ceil_div(T a, T b) { return (a + b - 1) / b; }

// Reduction over the 32 lanes of a full warp with a commutative, associative op; every lane
// gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

struct SumOp {
  template <typename T> __host__ __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T> __host__ __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  return warp_reduce(v, SumOp{});
}

// Calls f(i) for every i < n, spread over the whole grid (grid-stride loop).
template <typename F>
__device__ __forceinline__ void grid_stride(int64_t n, F f) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// Each block takes one contiguous range of about n / gridDim.x elements (a whole number of
// blockDim.x), its threads striding through it together. For stencils: the neighbours an
// element reads (a row above and below) are then mostly the block's own elements, read from
// DRAM once and served from L1/L2 after, where a grid-stride loop gives every blockDim.x-long
// piece its own halo. Each warp's accesses stay as coalesced as with grid_stride.
template <typename F>
__device__ __forceinline__ void block_range(int64_t n, F f) {
  const int64_t threads = blockDim.x;
  const int64_t per_block = ceil_div<int64_t>(ceil_div<int64_t>(n, int64_t(gridDim.x)), threads) * threads;
  const int64_t begin = int64_t(blockIdx.x) * per_block;
  const int64_t end = begin + per_block < n ? begin + per_block : n;
  for (int64_t i = begin + threadIdx.x; i < end; i += threads) f(i);
}

// Reduction over the whole block (blockDim.x a multiple of 32) with op and its identity;
// every thread gets the result. Every thread of the block must call it (it synchronises).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity) {
  FR_SHARED(T, partial, kWarpSize);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  v = warp_reduce(v, op);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  return warp_reduce(lane < warps ? partial[lane] : identity, op);
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return block_reduce(v, SumOp{}, T(0));
}

}  // namespace fastrobust
