#pragma once
// CIFS reweighting device code: forward, and the backward's two kernels, with launchers.
// Free of CUDA runtime and torch headers (nvcc, or g++ through csrc/emu/cuda_emu.h).
//
// The forward and the first backward kernel split each sample's (C, HW) block into chunks
// of whole channels (about kChunkElems elements), a block per (chunk, sample): every block
// recomputes its sample's softmax statistics from the relevance row (C values, cheap), keeps
// the mask of its channels in shared memory and streams feat (and grad_out) once as one flat,
// coalesced range, whatever the spatial size (a 4x4 map is 16 elements: a warp per channel
// would leave half its lanes idle). Element -> channel is tracked incrementally (ChannelCursor),
// never by a division per element. The first backward kernel also reduces
// d_c = sum_hw grad_out * feat: each warp streams its own whole channels and sums them by a
// segmented warp scan, so d is written once per channel, coalesced; the second kernel, a block
// per sample, turns d into the relevance gradient. A sample of at most kWholeSampleElems
// elements is one block of kWholeSampleThreads threads instead: d stays in shared memory and
// the same block forms the relevance gradient (one launch, d never in global memory, the
// relevance row read once: the backward's traffic is its inputs and outputs once).
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
// The forward's blocks: a chunk's 4096 elements, 8 a thread, so that a small batch of small
// maps still has many loads in flight (at B 128, C 512, 4x4 it is 256 blocks).
constexpr int kForwardThreads = 512;
constexpr int64_t kChunkElems = 4096;
// At most this many channels per block: the backward keeps three acc arrays of them in shared
// memory (3 x 1024 doubles = 24 KiB).
constexpr int64_t kMaxChunkChannels = 1024;
// Flat loops start at a multiple of this many elements of the whole tensor (lanes before the
// chunk idle): a chunk of 7x7 maps starts anywhere, and an unaligned warp access touches one
// 32-byte sector more than it needs.
constexpr int64_t kAlignElems = kWarpSize;

// The backward's single-kernel form: a whole sample per block, this many threads (as many
// threads in flight as the chunked form's blocks of such a sample, which are at most four).
constexpr int64_t kWholeSampleElems = 4 * kChunkElems;
constexpr int kWholeSampleThreads = 4 * kThreads;

inline bool whole_sample_backward(int64_t channels, int64_t spatial) {
  return channels <= kMaxChunkChannels && channels * spatial <= kWholeSampleElems;
}

// Channels per block: whole channels, about kChunkElems elements.
inline int64_t chunk_channels(int64_t channels, int64_t spatial) {
  const int64_t by_size = kChunkElems / std::max<int64_t>(spatial, 1);
  return std::max<int64_t>(1, std::min({channels, by_size, kMaxChunkChannels}));
}

// The channel (and offset in it, 0 <= offset < spatial) of a flat index into whole channels of
// `spatial` elements, advanced by a fixed stride: one division when made, additions after. A
// negative index (a lane before the range, see kAlignElems) has a negative channel.
struct ChannelCursor {
  int64_t channel, offset, spatial, stride_channels, stride_offset;
  __device__ ChannelCursor(int64_t index, int64_t stride, int64_t spatial_)
      : channel(index >= 0 ? index / spatial_ : -((spatial_ - 1 - index) / spatial_)),
        offset(index - channel * spatial_), spatial(spatial_),
        stride_channels(stride / spatial_), stride_offset(stride % spatial_) {}
  __device__ void advance() {
    channel += stride_channels;
    offset += stride_offset;
    if (offset >= spatial) {
      offset -= spatial;
      ++channel;
    }
  }
};

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
// Returns the sample's softmax statistics.
template <typename acc>
__device__ SoftmaxStats<acc> chunk_mask(FR_GLOBAL(const acc) r, int64_t channels, int64_t per_chunk, acc temperature,
                                        acc scale, smem_ptr<acc> mask, int64_t& c0, int64_t& c1) {
  const SoftmaxStats<acc> st = softmax_stats(r, channels, temperature);
  c0 = int64_t(blockIdx.x) * per_chunk;
  c1 = std::min(channels, c0 + per_chunk);
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x)
    mask[c - c0] = scale * mc::shifted_exp(acc(r[c]), temperature, st.max_z) * st.inv_sum;
  __syncthreads();
  return st;
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
  const int64_t first = threadIdx.x - base % kAlignElems;
  ChannelCursor at(first, blockDim.x, a.spatial);
  for (int64_t i = first; i < n; i += blockDim.x, at.advance())
    if (i >= 0) out[i] = acc(feat[i]) * mask[at.channel];
}

// Inclusive sum of v over the lanes up to this one that hold the same channel (channels
// ascend along the lanes, so each channel's lanes are one run); the run's last lane gets the
// channel's total. Every lane of the warp must call it.
template <typename acc>
__device__ acc segmented_warp_sum(acc v, int64_t channel) {
  const int lane = threadIdx.x % kWarpSize;
  for (int delta = 1; delta < kWarpSize; delta *= 2) {
    const acc other = __shfl_up_sync(0xffffffffu, v, delta);
    const int64_t other_channel = __shfl_up_sync(0xffffffffu, channel, delta);
    if (lane >= delta && other_channel == channel) v += other;
  }
  return v;
}

// grad_r_c = (scale / T) p_c (d_c - sum p d) of one sample, by the whole block; d is read
// through `d` (global or shared memory).
template <typename acc, typename Dots>
__device__ void relevance_gradient(FR_GLOBAL(const acc) r, Dots d, const SoftmaxStats<acc>& st, int64_t channels,
                                   acc temperature, acc scale, FR_GLOBAL(acc) grad_relevance) {
  acc p_dot_d = 0;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x)
    p_dot_d += mc::shifted_exp(acc(r[c]), temperature, st.max_z) * st.inv_sum * acc(d[c]);
  p_dot_d = block_sum(p_dot_d);
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    const acc p = mc::shifted_exp(acc(r[c]), temperature, st.max_z) * st.inv_sum;
    grad_relevance[c] = mc::relevance_grad(p, acc(d[c]), p_dot_d, scale, temperature);
  }
}

// grad_feat = grad_out * m_c (+ grad_pooled_c / HW) and d_c = sum_hw grad_out * feat. Warp w
// owns the chunk's channels [w * k, (w + 1) * k) and streams them as one flat range, 32 elements a step; each
// step's products are summed per channel by a segmented warp scan, whose run ends add into the
// channel's shared slot (only this warp writes it, in a fixed order: deterministic). Then, with
// kWholeSample (the chunk is the whole sample), the block turns d into the relevance gradient;
// otherwise d is written once per channel, coalesced, for reweight_backward_relevance_kernel.
template <typename scalar_t, bool kWholeSample>
__global__ void reweight_backward_feat_kernel(ReweightPtrs<scalar_t, acc_t<scalar_t>> a, int64_t per_chunk) {
  using acc = acc_t<scalar_t>;
  FR_DYNAMIC_SMEM(acc, smem);
  smem_ptr<acc> mask = smem, dots = smem + per_chunk, pooled_term = smem + 2 * per_chunk;
  const int64_t b = blockIdx.y;
  FR_GLOBAL(const acc) r = a.relevance + b * a.channels;
  int64_t c0, c1;
  const SoftmaxStats<acc> st = chunk_mask<acc>(r, a.channels, per_chunk, a.temperature, a.scale, mask, c0, c1);
  const bool with_pooled = a.grad_pooled != nullptr;
  if (with_pooled) {
    FR_GLOBAL(const acc) grad_pooled = a.grad_pooled + b * a.channels;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x)
      pooled_term[c - c0] = acc(grad_pooled[c]) / acc(a.spatial);
    __syncthreads();
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  const int64_t chunk = c1 - c0, per_warp = ceil_div<int64_t>(chunk, warps);
  const int64_t first = std::min(chunk, warp * per_warp), last = std::min(chunk, first + per_warp);
  for (int64_t c = first + lane; c < last; c += kWarpSize) dots[c] = acc(0);
  __syncwarp();
  const int64_t base = (b * a.channels + c0) * a.spatial, end = last * a.spatial;
  FR_GLOBAL(const scalar_t) grad_out = a.grad_out + base;
  FR_GLOBAL(const scalar_t) feat = a.feat + base;
  FR_GLOBAL(scalar_t) out = a.out + base;
  const int64_t start = first * a.spatial, aligned_start = start - (base + start) % kAlignElems;
  ChannelCursor at(aligned_start + lane, kWarpSize, a.spatial);
  for (int64_t step = aligned_start; step < end; step += kWarpSize, at.advance()) {
    const int64_t i = step + lane;
    const bool inside = i >= start && i < end;
    acc product = 0;
    if (inside) {
      const acc g = acc(grad_out[i]);
      product = g * acc(feat[i]);
      out[i] = with_pooled ? g * mask[at.channel] + pooled_term[at.channel] : g * mask[at.channel];
    }
    // lanes before the start and past the end: runs of their own, channels still ascending
    const int64_t channel = inside ? at.channel : (i < start ? int64_t(-1) : last);
    const acc run = segmented_warp_sum(product, channel);
    const int64_t next = __shfl_down_sync(0xffffffffu, channel, 1);
    if (inside && (lane == kWarpSize - 1 || next != channel)) dots[channel] += run;
    __syncwarp();
  }
  __syncthreads();
  if constexpr (kWholeSample) {
    relevance_gradient<acc>(r, dots, st, a.channels, a.temperature, a.scale, a.grad_relevance + b * a.channels);
  } else {
    FR_GLOBAL(acc) channel_dots = a.channel_dots + b * a.channels + c0;
    for (int64_t c = threadIdx.x; c < chunk; c += blockDim.x) channel_dots[c] = dots[c];
  }
}

// The chunked backward's second kernel: the relevance gradient from d, a block per sample.
template <typename scalar_t>
__global__ void reweight_backward_relevance_kernel(ReweightPtrs<scalar_t, acc_t<scalar_t>> a) {
  using acc = acc_t<scalar_t>;
  const int64_t b = blockIdx.x;
  FR_GLOBAL(const acc) r = a.relevance + b * a.channels;
  FR_GLOBAL(const acc) d = a.channel_dots + b * a.channels;
  relevance_gradient<acc>(r, d, softmax_stats(r, a.channels, a.temperature), a.channels, a.temperature, a.scale,
                          a.grad_relevance + b * a.channels);
}

inline dim3 chunk_grid(int64_t batch, int64_t channels, int64_t per_chunk) {
  const int64_t chunks = ceil_div<int64_t>(channels, per_chunk);
  TORCH_CHECK(batch <= 65535 && chunks <= INT32_MAX, "feat: batch too large for one launch (", batch, ")");
  return dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(batch));
}

template <typename scalar_t>
void launch_forward(const ReweightPtrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  const int64_t per_chunk = chunk_channels(a.channels, a.spatial);
  FR_LAUNCH(reweight_forward_kernel<scalar_t>, chunk_grid(a.batch, a.channels, per_chunk), dim3(kForwardThreads),
            per_chunk * sizeof(acc_t<scalar_t>), stream, a, per_chunk);
}

template <typename scalar_t>
void launch_backward(const ReweightPtrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  if (whole_sample_backward(a.channels, a.spatial)) {
    FR_LAUNCH((reweight_backward_feat_kernel<scalar_t, true>), chunk_grid(a.batch, a.channels, a.channels),
              dim3(kWholeSampleThreads), 3 * a.channels * sizeof(acc_t<scalar_t>), stream, a, a.channels);
    return;
  }
  const int64_t per_chunk = chunk_channels(a.channels, a.spatial);
  FR_LAUNCH((reweight_backward_feat_kernel<scalar_t, false>), chunk_grid(a.batch, a.channels, per_chunk),
            dim3(kThreads), 3 * per_chunk * sizeof(acc_t<scalar_t>), stream, a, per_chunk);
  FR_LAUNCH(reweight_backward_relevance_kernel<scalar_t>, dim3(static_cast<unsigned>(a.batch)), dim3(kThreads), 0,
            stream, a);
}

}  // namespace cifs
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
