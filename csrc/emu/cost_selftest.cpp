// Kernels whose memory behaviour is known by hand, for tests of the cost model's counters
// (csrc/emu/cost_model.h; tests/test_emu_cost_model.py). _cost_case(name, n) runs one:
//   coalesced_copy       out[i] = in[i]: every warp load and store touches 4 sectors for 128
//                        useful bytes (sector efficiency 1)
//   strided_load         out[i] = in[8 i]: each lane's 4 bytes in a sector of its own
//                        (sector efficiency 1/8 for the loads, 1 for the stores)
//   broadcast_load       out[i] = in[0]: one sector, 4 useful bytes per warp load
//   shared_conflict      lane l writes and reads word 32 l of a shared array: all in bank 0,
//                        32 wavefronts per warp access (bank-conflict factor 32)
//   shared_linear        lane l at word l: one wavefront (factor 1)
//   shared_broadcast     every lane reads word 0: one wavefront (factor 1)
//   shared_realigned     lane 0 alone writes a word of bank 5, then __syncwarp, then the
//                        shared_linear pattern: the lanes meet at the __syncwarp, so lane 0's
//                        extra access is a warp access of its own (factor 1; grouped by the
//                        k-th access alone it would share bank 5 with lane 5's write)
//   dot_rows             out[i] = sum_t in[t] * (i + 1) over kDotLength terms, for i < n only:
//                        n * kDotLength multiply-adds (FR_COUNT_FMA), none from the idle
//                        threads of the last block
// n: elements of out; blocks of 128 threads, one element per thread.
#define FR_CUDA_EMULATION 1
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "../common/checks.h"
#include "../common/cuda_utils.cuh"

namespace fastrobust {
namespace emu {
namespace {

constexpr int kBlock = 128;

__global__ void copy_kernel(FR_GLOBAL(const float) in, FR_GLOBAL(float) out, int64_t n, int64_t stride) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i * stride];
}

enum class Pattern { kConflict, kLinear, kBroadcast };

template <Pattern P>
__global__ void shared_kernel(FR_GLOBAL(float) out, int64_t n) {
  FR_SHARED(float, s, 32 * kBlock);
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int word = P == Pattern::kConflict ? warp * 32 * 32 + 32 * lane : warp * 32 + lane;
  s[word] = static_cast<float>(t);
  __syncthreads();
  const float v = P == Pattern::kBroadcast ? s[warp * 32] : s[word];
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + t;
  if (i < n) out[i] = v;
}

__global__ void realigned_kernel(FR_GLOBAL(float) out, int64_t n) {
  FR_SHARED(float, s, 2 * 32 * kBlock);
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  if (lane == 0) s[32 * kBlock + 32 * warp + 5] = 1.0f;
  __syncwarp();
  s[32 * warp + lane] = static_cast<float>(t);
  __syncthreads();
  const float v = s[32 * warp + lane];
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + t;
  if (i < n) out[i] = v;
}

constexpr int kDotLength = 7;

__global__ void dot_rows_kernel(FR_GLOBAL(const float) in, FR_GLOBAL(float) out, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float sum = 0.0f;
  const float scale = static_cast<float>(i + 1);
  for (int t = 0; t < kDotLength; ++t) sum += float(in[t]) * scale;
  FR_COUNT_FMA(kDotLength);
  out[i] = sum;
}

at::Tensor cost_case(c10::string_view name_view, int64_t n) {
  const std::string name(name_view);
  FR_CHECK(n > 0, "n must be positive, got ", n);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor out = at::zeros({n}, f32);
  const dim3 grid(static_cast<unsigned>((n + kBlock - 1) / kBlock)), block(kBlock);
  if (name == "coalesced_copy" || name == "strided_load" || name == "broadcast_load") {
    const int64_t stride = name == "strided_load" ? 8 : name == "broadcast_load" ? 0 : 1;
    at::Tensor in = at::arange(std::max<int64_t>(n * stride, 1), f32);
    FR_LAUNCH(copy_kernel, grid, block, 0, nullptr, in.const_data_ptr<float>(), out.mutable_data_ptr<float>(), n,
              stride);
    return out;
  }
  if (name == "dot_rows") {
    at::Tensor in = at::arange(kDotLength, f32);
    FR_LAUNCH(dot_rows_kernel, grid, block, 0, nullptr, in.const_data_ptr<float>(), out.mutable_data_ptr<float>(), n);
    return out;
  }
  if (name == "shared_conflict") {
    FR_LAUNCH(shared_kernel<Pattern::kConflict>, grid, block, 0, nullptr, out.mutable_data_ptr<float>(), n);
    return out;
  }
  if (name == "shared_linear") {
    FR_LAUNCH(shared_kernel<Pattern::kLinear>, grid, block, 0, nullptr, out.mutable_data_ptr<float>(), n);
    return out;
  }
  if (name == "shared_realigned") {
    FR_LAUNCH(realigned_kernel, grid, block, 0, nullptr, out.mutable_data_ptr<float>(), n);
    return out;
  }
  if (name == "shared_broadcast") {
    FR_LAUNCH(shared_kernel<Pattern::kBroadcast>, grid, block, 0, nullptr, out.mutable_data_ptr<float>(), n);
    return out;
  }
  FR_CHECK(false, "name: no cost case called '", name, "'");
  return at::Tensor();
}

}  // namespace
}  // namespace emu

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def("_cost_case(str name, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CatchAll, m) {
  m.impl("_cost_case", &emu::cost_case);
}

}  // namespace fastrobust
