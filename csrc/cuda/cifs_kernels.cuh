#pragma once
// CIFS reweighting device code: forward, and the backward's two kernels, with launchers.
// Free of CUDA runtime and torch headers (nvcc, or g++ through csrc/emu/cuda_emu.h).
//
// The forward and the first backward kernel split each sample's (C, HW) block into chunks
// of whole channels (about kChunkElems elements), a block per (chunk, sample): every block
// recomputes its sample's softmax statistics from the relevance row (C values, cheap), keeps
// the mask of its channels in shared memory and streams feat (and grad_out) once. The first
// backward kernel also reduces d_c = sum_hw grad_out * feat, a warp per channel; the second,
// a block per sample, turns d into the relevance gradient.
#include <algorithm>
#include <cstdint>
#include <limits>

#include "../common/cuda_utils.cuh"
#include "../kernels/cifs.h"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace cifs {

using ::fastrobust::cifs::ReweightPtrs;
namespace mc = ::fastrobust::cifs;

constexpr int kThreads = 128;
constexpr int64_t kChunkElems = 4096;

// Channels per block: whole channels, about kChunkElems elements.
inline int64_t chunk_channels(int64_t channels, int64_t spatial) {
  return std::max<int64_t>(1, std::min<int64_t>(channels, kChunkElems / std::max<int64_t>(spatial, 1)));
}

// Softmax statistics of one sample's relevance row: max z and 1 / sum exp(z - max z).
template <typename acc>
struct SoftmaxStats {
  acc max_z, inv_sum;
};

template <typename acc>
__device__ SoftmaxStats<acc> softmax_stats(FR_GLOBAL(const acc) r, int64_t channels, acc temperature) {
  acc max_z = -std::numeric_limits<acc>::infinity();
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x)
    max_z = MaxOp{}(max_z, mc::logit(acc(r[c]), temperature));
  max_z = block_reduce(max_z, MaxOp{}, -std::numeric_limits<acc>::infinity());
  acc sum = 0;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) sum += mc::shifted_exp(acc(r[c]), temperature, max_z);
  return {max_z, acc(1) / block_sum(sum)};
}

// This block's chunk of channels [c0, c1) and, in shared memory, their mask scale * p_c.
template <typename acc>
__device__ void chunk_mask(FR_GLOBAL(const acc) r, int64_t channels, int64_t per_chunk, acc temperature, acc scale,
                           smem_ptr<acc> mask, int64_t& c0, int64_t& c1) {
  const SoftmaxStats<acc> st = softmax_stats(r, channels, temperature);
  c0 = int64_t(blockIdx.x) * per_chunk;
  c1 = std::min(channels, c0 + per_chunk);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x)
    mask[c - c0] = scale * mc::shifted_exp(acc(r[c]), temperature, st.max_z) * st.inv_sum;
  __syncthreads();
}

template <typename scalar_t>
__global__ void reweight_forward_kernel(ReweightPtrs<scalar_t, acc_t<scalar_t>> a, int64_t per_chunk) {
  using acc = acc_t<scalar_t>;
  FR_DYNAMIC_SMEM(acc, mask);
  const int64_t b = blockIdx.y;
  int64_t c0, c1;
  chunk_mask<acc>(a.relevance + b * a.channels, a.channels, per_chunk, a.temperature, a.scale, mask, c0, c1);
  const int64_t base = (b * a.channels + c0) * a.spatial, n = (c1 - c0) * a.spatial;
  FR_GLOBAL(const scalar_t) feat = a.feat + base;
  FR_GLOBAL(scalar_t) out = a.out + base;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = acc(feat[i]) * mask[i / a.spatial];
}

// grad_feat = grad_out * m_c and d_c = sum_hw grad_out * feat, a warp per channel.
template <typename scalar_t>
__global__ void reweight_backward_feat_kernel(ReweightPtrs<scalar_t, acc_t<scalar_t>> a, int64_t per_chunk) {
  using acc = acc_t<scalar_t>;
  FR_DYNAMIC_SMEM(acc, mask);
  const int64_t b = blockIdx.y;
  int64_t c0, c1;
  chunk_mask<acc>(a.relevance + b * a.channels, a.channels, per_chunk, a.temperature, a.scale, mask, c0, c1);
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  FR_GLOBAL(acc) channel_dots = a.channel_dots;
  for (int64_t c = c0 + warp; c < c1; c += warps) {
    const int64_t base = (b * a.channels + c) * a.spatial;
    FR_GLOBAL(const scalar_t) grad_out = a.grad_out + base;
    FR_GLOBAL(const scalar_t) feat = a.feat + base;
    FR_GLOBAL(scalar_t) out = a.out + base;
    const acc m = mask[c - c0];
    acc dot = 0;
    for (int64_t i = lane; i < a.spatial; i += kWarpSize) {
      const acc g = acc(grad_out[i]);
      dot += g * acc(feat[i]);
      out[i] = g * m;
    }
    dot = warp_sum(dot);
    if (lane == 0) channel_dots[b * a.channels + c] = dot;
  }
}

// grad_r_c = (scale / T) p_c (d_c - sum p d), a block per sample.
template <typename scalar_t>
__global__ void reweight_backward_relevance_kernel(ReweightPtrs<scalar_t, acc_t<scalar_t>> a) {
  using acc = acc_t<scalar_t>;
  const int64_t b = blockIdx.x;
  FR_GLOBAL(const acc) r = a.relevance + b * a.channels;
  FR_GLOBAL(const acc) d = a.channel_dots + b * a.channels;
  FR_GLOBAL(acc) grad_relevance = a.grad_relevance + b * a.channels;
  const SoftmaxStats<acc> st = softmax_stats(r, a.channels, a.temperature);
  acc p_dot_d = 0;
  for (int64_t c = threadIdx.x; c < a.channels; c += blockDim.x)
    p_dot_d += mc::shifted_exp(acc(r[c]), a.temperature, st.max_z) * st.inv_sum * acc(d[c]);
  p_dot_d = block_sum(p_dot_d);
  for (int64_t c = threadIdx.x; c < a.channels; c += blockDim.x) {
    const acc p = mc::shifted_exp(acc(r[c]), a.temperature, st.max_z) * st.inv_sum;
    grad_relevance[c] = mc::relevance_grad(p, acc(d[c]), p_dot_d, a.scale, a.temperature);
  }
}

inline dim3 chunk_grid(int64_t batch, int64_t channels, int64_t per_chunk) {
  const int64_t chunks = ceil_div<int64_t>(channels, per_chunk);
  TORCH_CHECK(batch <= 65535 && chunks <= INT32_MAX, "feat: batch too large for one launch (", batch, ")");
  return dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(batch));
}

template <typename scalar_t>
void launch_forward(const ReweightPtrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  const int64_t per_chunk = chunk_channels(a.channels, a.spatial);
  FR_LAUNCH(reweight_forward_kernel<scalar_t>, chunk_grid(a.batch, a.channels, per_chunk), dim3(kThreads),
            per_chunk * sizeof(acc_t<scalar_t>), stream, a, per_chunk);
}

template <typename scalar_t>
void launch_backward(const ReweightPtrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  const int64_t per_chunk = chunk_channels(a.channels, a.spatial);
  FR_LAUNCH(reweight_backward_feat_kernel<scalar_t>, chunk_grid(a.batch, a.channels, per_chunk), dim3(kThreads),
            per_chunk * sizeof(acc_t<scalar_t>), stream, a, per_chunk);
  FR_LAUNCH(reweight_backward_relevance_kernel<scalar_t>, dim3(static_cast<unsigned>(a.batch)), dim3(kThreads), 0,
            stream, a);
}

}  // namespace cifs
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
