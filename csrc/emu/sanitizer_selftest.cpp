// Deliberately broken kernels and their correct twins, to show that each check of the
// emulator's sanitizer fires on the defect it is for (tests/test_emu_sanitizer.py), as the
// op fastrobust_emu::_sanitizer_case(name, broken) -> Tensor:
//
//   missing_barrier        threads read a neighbour's shared element with no __syncthreads()
//                          after its write (racecheck)
//   uninitialized_read     a shared element read before any thread wrote it (initcheck)
//   shared_out_of_bounds   a write one past the end of a shared array (memcheck)
//   divergent_barrier      two halves of a block wait at different __syncthreads() (synccheck)
//   partial_warp_full_mask a 16-thread block shuffles with the full 32-lane mask (synccheck)
//   divergent_shuffle      half a warp shuffles while the other half takes a ballot (synccheck)
//   wmma_partial_warp      half a warp calls a wmma load (synccheck)
//   mma_partial_warp       half a warp calls mma.sync m16n8k16 (synccheck)
//   cp_async_no_wait       a cp.async destination read before the copy was waited for (initcheck)
//   cp_async_unwaited      a thread leaves its block with a cp.async copy it never waited for
//   shared_over_48k        40 KiB static plus 10 KiB dynamic shared memory (launch limit)
//   fragment_mapping       an accumulator fragment written out element by element, assuming
//                          which lane holds which entry (the broken twin's output depends on
//                          the mapping the seed draws)
//   global_out_of_bounds   a write one past the end of the output tensor (AddressSanitizer)
// The correct twin of each computes the same result without the defect.
#define FR_CUDA_EMULATION 1
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

#include "../common/checks.h"
#include "../common/cuda_utils.cuh"
#include "../common/cp_async.cuh"
#include "../common/mma.cuh"
#include "../common/wmma.cuh"

namespace fastrobust {
namespace emu {
namespace {

constexpr int kBlock = 64;

// out[t] = t + 1 (thread t reads what thread t + 1 wrote).
template <bool kBroken>
__global__ void neighbour_kernel(float* out) {
  FR_SHARED(float, s, kBlock);
  const int t = threadIdx.x;
  s[t] = -1.f;
  __syncthreads();
  s[t] = static_cast<float>(t);
  if (!kBroken) __syncthreads();
  out[t] = s[(t + 1) % kBlock];
}

template <bool kBroken>
__global__ void uninitialized_kernel(float* out) {
  FR_SHARED(float, s, kBlock);
  const int t = threadIdx.x;
  if (!kBroken) s[t] = 2.f * t;
  __syncthreads();
  out[t] = s[t];
}

template <bool kBroken>
__global__ void shared_bounds_kernel(float* out) {
  FR_SHARED(float, s, kBlock);
  const int t = threadIdx.x;
  s[kBroken && t == 0 ? kBlock : t] = static_cast<float>(t);
  __syncthreads();
  out[t] = kBroken && t == 0 ? 0.f : s[t];
}

template <bool kBroken>
__global__ void divergent_barrier_kernel(float* out) {
  FR_SHARED(float, s, kBlock);
  const int t = threadIdx.x;
  s[t] = static_cast<float>(t);
  if (kBroken) {
    if (t < kBlock / 2)
      __syncthreads();
    else
      __syncthreads();
  } else {
    __syncthreads();
  }
  out[t] = s[kBlock - 1 - t];
}

// A block of 16 threads: each adds its partner's value (lane ^ 1).
template <bool kBroken>
__global__ void partial_warp_kernel(float* out) {
  const int t = threadIdx.x;
  const float v = static_cast<float>(t);
  out[t] = v + __shfl_xor_sync(kBroken ? 0xffffffffu : 0x0000ffffu, v, 1);
}

// One warp: each lane adds its partner's value (lane ^ 1); broken, the upper half takes a ballot
// instead, in divergent code (on the hardware the two halves do not exchange anything).
template <bool kBroken>
__global__ void divergent_shuffle_kernel(float* out) {
  const int t = threadIdx.x;
  const float v = static_cast<float>(t);
  if (kBroken && t >= 16)
    out[t] = static_cast<float>(__popc(__ballot_sync(0xffffffffu, t % 2)));
  else
    out[t] = v + __shfl_xor_sync(0xffffffffu, v, 1);
}

// One warp loads a 16 x 16 bf16 tile (all lanes, or, broken, only the first 16).
template <bool kBroken>
__global__ void wmma_partial_kernel(const c10::BFloat16* a, float* out) {
  const int lane = threadIdx.x;
  if (kBroken && lane >= 16) return;
  wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDim, c10::BFloat16, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a, kWmmaDim);
  out[lane] = static_cast<float>(fa.x[lane]);
}

// One warp multiplies ones (16 x 16) by ones (16 x 8): every entry 16 (all lanes, or, broken,
// only the first 16).
template <bool kBroken>
__global__ void mma_partial_kernel(float* out) {
  const int lane = threadIdx.x;
  if (kBroken && lane >= 16) return;
  const uint32_t ones = pack_pair<c10::BFloat16>(1.f, 1.f);
  const uint32_t a[4] = {ones, ones, ones, ones}, b[2] = {ones, ones};
  float d[4] = {};
  mma_m16n8k16<c10::BFloat16>(d, a, b);
  out[lane] = d[0];
}

// Each thread copies 16 bytes into shared memory with cp.async and reads them back (broken:
// before waiting for the copy).
template <bool kBroken>
__global__ void cp_async_kernel(const float* src, float* out) {
  FR_SHARED_ALIGNED(16, float, s, 4 * kWarpSize);
  const int t = threadIdx.x;
  cp_async_16(s + 4 * t, FR_GLOBAL(const float)(src + 4 * t), 16);
  cp_async_commit();
  if (!kBroken) cp_async_wait<0>();
  out[t] = s[4 * t];
  cp_async_wait<0>();
}

// Each thread copies 16 bytes into shared memory with cp.async and writes 1 (broken: without
// ever waiting for the copy).
template <bool kBroken>
__global__ void cp_async_unwaited_kernel(const float* src, float* out) {
  FR_SHARED_ALIGNED(16, float, s, 4 * kWarpSize);
  const int t = threadIdx.x;
  cp_async_16(s + 4 * t, FR_GLOBAL(const float)(src + 4 * t), 16);
  cp_async_commit();
  if (!kBroken) cp_async_wait<0>();
  out[t] = 1.f;
}

constexpr int kStatic = 40 * 1024 / sizeof(float);

__global__ void big_shared_kernel(float* out, int dynamic_elems) {
  FR_SHARED(float, s, kStatic);
  FR_DYNAMIC_SMEM(float, d);
  const int t = threadIdx.x;
  s[t] = 1.f;
  if (t < dynamic_elems) d[t] = 2.f;
  __syncthreads();
  out[t] = s[t] + (t < dynamic_elems ? float(d[t]) : 0.f);
}

// c = A B with one warp; broken: the accumulator written out as if element i of lane l were
// entry 32 i + l of the tile, which CUDA leaves unspecified.
template <bool kBroken>
__global__ void fragment_mapping_kernel(const c10::BFloat16* a, const c10::BFloat16* b, float* c) {
  wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDim, c10::BFloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, kWmmaDim, kWmmaDim, kWmmaDim, c10::BFloat16, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, kWmmaDim, kWmmaDim, kWmmaDim, float> acc;
  wmma::load_matrix_sync(fa, a, kWmmaDim);
  wmma::load_matrix_sync(fb, b, kWmmaDim);
  wmma::fill_fragment(acc, 0.f);
  wmma::mma_sync(acc, fa, fb, acc);
  if (kBroken) {
    for (int i = 0; i < acc.num_elements; ++i) c[kWarpSize * i + threadIdx.x] = acc.x[i];
  } else {
    wmma::store_matrix_sync(c, acc, kWmmaDim, wmma::mem_row_major);
  }
}

template <bool kBroken>
__global__ void global_bounds_kernel(float* out, int n) {
  const int t = threadIdx.x;
  if (t < n) out[t] = static_cast<float>(t);
  if (kBroken && t == 0) out[n] = 1.f;  // one past the end of the tensor
}

#define FR_LAUNCH_TWIN(kernel, broken, grid, block, smem, ...)               \
  do {                                                                         \
    if (broken)                                                                \
      FR_LAUNCH(kernel<true>, grid, block, smem, nullptr, __VA_ARGS__);        \
    else                                                                       \
      FR_LAUNCH(kernel<false>, grid, block, smem, nullptr, __VA_ARGS__);       \
  } while (0)

at::Tensor sanitizer_case(c10::string_view name_view, bool broken) {
  const std::string name(name_view);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  if (name == "missing_barrier" || name == "uninitialized_read" || name == "shared_out_of_bounds" ||
      name == "divergent_barrier") {
    at::Tensor out = at::zeros({kBlock}, f32);
    float* p = out.mutable_data_ptr<float>();
    if (name == "missing_barrier") FR_LAUNCH_TWIN(neighbour_kernel, broken, dim3(1), dim3(kBlock), 0, p);
    if (name == "uninitialized_read") FR_LAUNCH_TWIN(uninitialized_kernel, broken, dim3(1), dim3(kBlock), 0, p);
    if (name == "shared_out_of_bounds") FR_LAUNCH_TWIN(shared_bounds_kernel, broken, dim3(1), dim3(kBlock), 0, p);
    if (name == "divergent_barrier") FR_LAUNCH_TWIN(divergent_barrier_kernel, broken, dim3(1), dim3(kBlock), 0, p);
    return out;
  }
  if (name == "partial_warp_full_mask") {
    at::Tensor out = at::zeros({16}, f32);
    FR_LAUNCH_TWIN(partial_warp_kernel, broken, dim3(1), dim3(16), 0, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "divergent_shuffle") {
    at::Tensor out = at::zeros({kWarpSize}, f32);
    FR_LAUNCH_TWIN(divergent_shuffle_kernel, broken, dim3(1), dim3(kWarpSize), 0, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "wmma_partial_warp") {
    at::Tensor a = at::arange(kWmmaDim * kWmmaDim, f32).to(at::kBFloat16);
    at::Tensor out = at::zeros({kWarpSize}, f32);
    FR_LAUNCH_TWIN(wmma_partial_kernel, broken, dim3(1), dim3(kWarpSize), 0, a.const_data_ptr<c10::BFloat16>(),
                   out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "mma_partial_warp") {
    at::Tensor out = at::zeros({kWarpSize}, f32);
    FR_LAUNCH_TWIN(mma_partial_kernel, broken, dim3(1), dim3(kWarpSize), 0, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "cp_async_no_wait") {
    at::Tensor src = at::arange(4 * kWarpSize, f32);
    at::Tensor out = at::zeros({kWarpSize}, f32);
    FR_LAUNCH_TWIN(cp_async_kernel, broken, dim3(1), dim3(kWarpSize), 0, src.const_data_ptr<float>(),
                   out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "cp_async_unwaited") {
    at::Tensor src = at::arange(4 * kWarpSize, f32);
    at::Tensor out = at::zeros({kWarpSize}, f32);
    FR_LAUNCH_TWIN(cp_async_unwaited_kernel, broken, dim3(1), dim3(kWarpSize), 0, src.const_data_ptr<float>(),
                   out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "shared_over_48k") {
    const int dynamic_elems = broken ? 10 * 1024 / sizeof(float) : 16;
    at::Tensor out = at::zeros({kBlock}, f32);
    FR_LAUNCH(big_shared_kernel, dim3(1), dim3(kBlock), dynamic_elems * sizeof(float), nullptr,
              out.mutable_data_ptr<float>(), dynamic_elems);
    return out;
  }
  if (name == "fragment_mapping") {
    at::Tensor a = at::arange(kWmmaDim * kWmmaDim, f32).remainder(7).sub(3).to(at::kBFloat16);
    at::Tensor b = at::arange(kWmmaDim * kWmmaDim, f32).remainder(5).sub(2).to(at::kBFloat16);
    at::Tensor c = at::zeros({kWmmaDim, kWmmaDim}, f32);
    FR_LAUNCH_TWIN(fragment_mapping_kernel, broken, dim3(1), dim3(kWarpSize), 0, a.const_data_ptr<c10::BFloat16>(),
                   b.const_data_ptr<c10::BFloat16>(), c.mutable_data_ptr<float>());
    return c;
  }
  if (name == "global_out_of_bounds") {
    at::Tensor out = at::zeros({kBlock}, f32);
    FR_LAUNCH_TWIN(global_bounds_kernel, broken, dim3(1), dim3(kBlock), 0, out.mutable_data_ptr<float>(),
                   static_cast<int>(kBlock));
    return out;
  }
  FR_CHECK(false, "name: no sanitizer case called '", name, "'");
  return at::Tensor();
}

}  // namespace
}  // namespace emu

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def("_sanitizer_case(str name, bool broken) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CatchAll, m) {
  m.impl("_sanitizer_case", &emu::sanitizer_case);
}

}  // namespace fastrobust
