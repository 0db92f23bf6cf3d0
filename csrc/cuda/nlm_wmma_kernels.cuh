#pragma once
// The softmax non-local-means backward on tensor cores, for fp16 and bf16 inputs and, where tf32
// is allowed, fp32 inputs (sm_80+): every product of a tile is a warp matrix operation with float
// accumulators (16x16x16 on 16-bit values; 16x16x8 on tf32 values, the fp32 inputs rounded to
// 10-bit mantissas as they are loaded into fragments, their tiles staged as float); the softmax
// maths between products is SIMT code on float tiles in shared memory.
//
// A block has 4 warps and owns kQueries = 64 positions of its own (warp w: rows 16w .. 16w + 15
// in every step, so a warp's SIMT rows and matrix tiles are the same); the other axis comes in
// tiles of kKeys = 32.
//
// The forward is in nlm_mma_forward.cuh, one pass over the keys on mma.sync with its
// accumulators in registers; it uses this file's tiles and staging.
//
// The backward computes each logit and each dp = dy . g once: a plane kernel writes a tile of
// the (query, key) planes p and ds per block to global memory in the input type, and
// weighted-sum kernels form the gradients as matrix products over those planes, kGradWidth =
// 128 output columns per block with the accumulators in wmma fragments. Recomputing the logits
// in every output slice instead (as these kernels did, C and d being too wide for one block's
// accumulators) cost a C-deep dp per 128 columns of d: up to 5.6x the minimal work at the
// benchmark shapes, where C and d are 128 to 1024 wide, against 4 N^2 bytes per sample of planes
// here (written once, read once per output; the batch runs in chunks within a memory budget,
// csrc/cuda/nlm_dispatch.h).
//
// Device code compiled for an architecture without bf16 tensor cores (FR_HAS_WMMA = 0) has
// kernels whose body is a trap: the host launches these kernels only where
// tensor_core_kernels_usable (csrc/ops/nlm.h) says their compiled code has a body.
#include <type_traits>

#include "../common/wmma.cuh"
#include "nlm_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace tc {

constexpr int kQueries = 64;                     // queries per block (16 per warp)
constexpr int kKeys = 32;                        // keys per tile
constexpr int kChunk = 2 * kWmmaDim;             // rows of the reduction staged per barrier pair
constexpr int kWarps = kQueries / kWmmaDim;
// Leading dimensions of the shared tiles: a multiple of 16 bytes (wmma), padded off a
// multiple of 128 bytes against bank conflicts.
constexpr int kLdTheta = kQueries + 8;           // theta chunk, col-major A: [k][query]
constexpr int kLdKey = kKeys + 8;                // phi chunk [k][key]; P [query][key]; g [channel][key]
constexpr int kLdS = kKeys + 4;                  // float S [query][key]
constexpr int kLdO = kOutWidth + 4;              // float O [query][channel]
// The weighted-sum kernels own twice as many output columns per block as the one-pass
// forward: their accumulators stay in registers (no rescaling).
constexpr int kGradWidth = 2 * kOutWidth;
static_assert(kThreads == kWarps * kWarpSize, "one warp per 16 query rows");
static_assert(kChunk % kWmmaDim == 0, "whole warp products per chunk");
static_assert(kQueries == kWarps * kWmmaDim && kKeys % kWmmaDim == 0 && kOutWidth % kWmmaDim == 0, "tile shape");
static_assert(kKeys == kWarpSize, "a plane tile's row is written a lane per key");


}  // namespace tc

#if FR_HAS_WMMA
// dst[r * kLdS + t] = sum_k own[k, p0 + r] other[k, o0 + t] for the calling warp's 16 rows r and
// the kKeys columns t, own and other one sample's (width, n) slices (0 outside them), through
// chunks of kChunk rows staged in Own ([k][position], kLdTheta) and Oth ([k][position], kLdKey),
// each consumed as kChunk / 16 warp products. Every thread of the block must call it.
template <typename scalar_t>
__device__ void tile_product(smem_ptr<float> dst, FR_GLOBAL(const scalar_t) own, FR_GLOBAL(const scalar_t) other,
                             int64_t width, int64_t n, int64_t p0, int64_t o0, smem_ptr<scalar_t> Own,
                             smem_ptr<scalar_t> Oth) {
  using namespace tc;
  constexpr int kDepth = kWmmaDepth<scalar_t>;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  WmmaAcc<scalar_t> acc[kKeys / kWmmaDim];
  for (auto& f : acc) wmma::fill_fragment(f, 0.f);
  for (int64_t k0 = 0; k0 < width; k0 += kChunk) {
    stage<kQueries>(Own, kLdTheta, own, width, n, k0, kChunk, p0);
    stage<kKeys>(Oth, kLdKey, other, width, n, k0, kChunk, o0);
    __syncthreads();
    for (int kk = 0; kk < kChunk / kDepth; ++kk) {
      WmmaA<scalar_t, wmma::col_major> fa;
      load_operand<scalar_t>(fa, as_wmma(Own + kk * kDepth * kLdTheta + warp * kWmmaDim), kLdTheta);
      for (int t = 0; t < kKeys / kWmmaDim; ++t) {
        WmmaB<scalar_t, wmma::row_major> fb;
        load_operand<scalar_t>(fb, as_wmma(Oth + kk * kDepth * kLdKey + t * kWmmaDim), kLdKey);
        wmma::mma_sync(acc[t], fa, fb, acc[t]);
      }
    }
    __syncthreads();  // before the next chunk is staged
  }
  for (int t = 0; t < kKeys / kWmmaDim; ++t)
    wmma::store_matrix_sync(dst + warp * kWmmaDim * kLdS + t * kWmmaDim, acc[t], kLdS, wmma::mem_row_major);
}

// acc[f] += T (the warp's 16 rows x kKeys) times X (kKeys x kWidth, stored [column][key] with
// kLdKey), for the kWidth / 16 column blocks f. T is row-major ([row][key], kLdKey), or
// column-major ([key][row], kLdTheta) when kTransposed.
template <int kWidth, bool kTransposed, typename scalar_t>
__device__ __forceinline__ void accumulate_product(WmmaAcc<scalar_t> (&acc)[kWidth / kWmmaDim],
                                                   smem_ptr<scalar_t> Ts, smem_ptr<scalar_t> Xs) {
  using namespace tc;
  constexpr int kDepth = kWmmaDepth<scalar_t>;
  using Layout = std::conditional_t<kTransposed, wmma::col_major, wmma::row_major>;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  for (int f = 0; f < kWidth / kWmmaDim; ++f)
    for (int kk = 0; kk < kKeys / kDepth; ++kk) {
      WmmaA<scalar_t, Layout> ft;
      WmmaB<scalar_t, wmma::col_major> fx;
      if constexpr (kTransposed)
        load_operand<scalar_t>(ft, as_wmma(Ts + kk * kDepth * kLdTheta + warp * kWmmaDim), kLdTheta);
      else
        load_operand<scalar_t>(ft, as_wmma(Ts + warp * kWmmaDim * kLdKey + kk * kDepth), kLdKey);
      load_operand<scalar_t>(fx, as_wmma(Xs + f * kWmmaDim * kLdKey + kk * kDepth), kLdKey);
      wmma::mma_sync(acc[f], ft, fx, acc[f]);
    }
}
#endif

// out[(w0 + c) * n + p0 + r] = Fs[r * kLdO + c] inside one sample's (width, n) slice. A warp
// takes 16 positions of 2 columns: each column's 16 values fill one 32-byte sector of the
// output, and the column read of the float tile (rows kLdO = 4 mod 32 words apart) meets 2
// words per bank, where 32 positions of one column met 4.
template <typename scalar_t>
__device__ __forceinline__ void store_tile_output(FR_GLOBAL(scalar_t) out, smem_ptr<float> Fs,
                                                  int64_t width, int64_t n, int64_t w0, int64_t p0) {
  using namespace tc;
  constexpr int kRun = kWarpSize / 2;  // positions per column in a warp's step
  static_assert(kQueries % kRun == 0 && kOutWidth % 2 == 0, "whole steps");
  for (int e = threadIdx.x; e < kOutWidth * kQueries; e += blockDim.x) {
    const int step = e / kWarpSize, lane = e % kWarpSize;
    const int r = (step % (kQueries / kRun)) * kRun + lane % kRun;
    const int c = (step / (kQueries / kRun)) * 2 + lane / kRun;
    if (w0 + c < width && p0 + r < n)
      out[(w0 + c) * n + p0 + r] = static_cast<scalar_t>(float(Fs[r * kLdO + c]));
  }
}

// The tensor-core backward's planes (Planes, csrc/cuda/nlm_kernels.cuh): p and ds in the input
// type, as the products take them.
template <typename scalar_t>
using WmmaPlanes = Planes<float, scalar_t>;

// One block: the kQueries x kKeys tile (blockIdx.x, blockIdx.y) of the (query, key) planes of
// sample s: its logits (d deep) and dp = dy . g (C deep) on tensor cores, then p and ds in the
// input type; each warp writes its 16 rows a row per step, a lane per key (coalesced).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) plane_tile_wmma_kernel(Ptrs<scalar_t, float> a, WmmaPlanes<scalar_t> pl) {
#if FR_HAS_WMMA
  using namespace tc;
  FR_SHARED_ALIGNED(32, scalar_t, Own, kChunk * kLdTheta);
  FR_SHARED_ALIGNED(32, scalar_t, Oth, kChunk * kLdKey);
  FR_SHARED_ALIGNED(32, float, Ss, kQueries * kLdS);
  FR_SHARED_ALIGNED(32, float, Dps, kQueries * kLdS);
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t s = blockIdx.z, b = pl.sample0 + s, n = a.positions;
  const int64_t q0 = int64_t(blockIdx.x) * kQueries, k0 = int64_t(blockIdx.y) * kKeys, j = k0 + lane;
  tile_product<scalar_t>(Ss, a.theta + b * a.dim * n, a.phi + b * a.dim * n, a.dim, n, q0, k0, Own, Oth);
  tile_product<scalar_t>(Dps, a.grad_y + b * a.channels * n, a.g + b * a.channels * n, a.channels, n, q0, k0, Own,
                         Oth);
  __syncwarp();
  FR_GLOBAL(const float) lse = a.lse + b * n;
  FR_GLOBAL(scalar_t) weights = pl.weights + s * n * n;
  FR_GLOBAL(scalar_t) logit_grads = pl.logit_grads + s * n * n;
  for (int r = 0; r < kWmmaDim; ++r) {
    const int row = warp * kWmmaDim + r;
    const int64_t i = q0 + row;
    if (i >= n) break;  // the same for the whole warp
    if (j < n) {
      const float p = mn::probability(a.scale * Ss[row * kLdS + lane], float(lse[i]));
      weights[i * n + j] = static_cast<scalar_t>(p);
      logit_grads[i * n + j] =
          static_cast<scalar_t>(mn::scaled_logit_grad(p, float(Dps[row * kLdS + lane]), row_dot_of(a, b, i), a.scale));
    }
  }
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// One block: kGradWidth columns of a gradient for kQueries own positions, a sum over the
// other axis of a plane tile T times a staged slice X of one input:
//   dg_j     = sum_i p_ij dy_i         (own = keys,    T = weights^T)
//   dphi_j   = sum_i ds_ij theta_i     (own = keys,    T = logit_grads^T)
//   dtheta_i = sum_j ds_ij phi_j       (own = queries, T = logit_grads)
// The accumulators stay in registers (no rescaling) and are written through shared memory at
// the end.
template <typename scalar_t, Grad kWhich>
__global__ void __launch_bounds__(kThreads) weighted_sum_wmma_kernel(Ptrs<scalar_t, float> a, WmmaPlanes<scalar_t> pl) {
#if FR_HAS_WMMA
  using namespace tc;
  static_assert(kWhich != Grad::kY, "y comes from the one-pass forward (nlm_mma_forward.cuh)");
  constexpr bool kByKey = kOwnKeys<kWhich>;
  FR_SHARED_ALIGNED(32, scalar_t, Ts, kByKey ? kKeys * kLdTheta : kQueries * kLdKey);
  FR_SHARED_ALIGNED(32, scalar_t, Xs, kGradWidth * kLdKey);
  FR_SHARED_ALIGNED(32, float, Fs, kQueries * kLdO);

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t s = blockIdx.z, b = pl.sample0 + s, n = a.positions;
  const int64_t p0 = int64_t(blockIdx.x) * kQueries, w0 = int64_t(blockIdx.y) * kGradWidth;
  const int64_t width = kChannelWide<kWhich> ? a.channels : a.dim;
  FR_GLOBAL(const scalar_t) x = weighted_sum_input<kWhich>(a) + b * width * n;
  FR_GLOBAL(scalar_t) out = weighted_sum_output<kWhich>(a) + b * width * n;
  FR_GLOBAL(const scalar_t) plane = (kWhich == Grad::kG ? pl.weights : pl.logit_grads) + s * n * n;

  WmmaAcc<scalar_t> o_acc[kGradWidth / kWmmaDim];
  for (auto& f : o_acc) wmma::fill_fragment(f, 0.f);
  for (int64_t o0 = 0; o0 < n; o0 += kKeys) {
    stage<kKeys>(Xs, kLdKey, x, width, n, w0, kGradWidth, o0);
    if constexpr (kByKey) {
      stage<kQueries>(Ts, kLdTheta, plane, n, n, o0, kKeys, p0);  // Ts[t][own] = plane[o0 + t][p0 + own]
    } else {
      stage<kKeys>(Ts, kLdKey, plane, n, n, p0, kQueries, o0);  // Ts[own][t] = plane[p0 + own][o0 + t]
    }
    __syncthreads();  // T and X staged by the block
    accumulate_product<kGradWidth, kByKey>(o_acc, Ts, Xs);
    __syncthreads();  // before the next tile restages them
  }
  // written kOutWidth columns at a time through the float buffer
  constexpr int kPerPass = kOutWidth / kWmmaDim;
  for (int pass = 0; pass < kGradWidth / kOutWidth; ++pass) {
    for (int f = 0; f < kPerPass; ++f)
      wmma::store_matrix_sync(Fs + warp * kWmmaDim * kLdO + f * kWmmaDim, o_acc[pass * kPerPass + f], kLdO,
                              wmma::mem_row_major);
    __syncthreads();
    store_tile_output(out, Fs, width, n, w0 + pass * kOutWidth, p0);
    __syncthreads();  // before the next pass overwrites the buffer
  }
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// D first (whole batch), then per chunk the p and ds planes and the three gradients over them.
template <typename scalar_t>
void launch_backward_wmma(const Ptrs<scalar_t, float>& a, const WmmaPlanes<scalar_t>& planes, cudaStream_t stream) {
  launch_row_dot(a, stream);
  for_each_chunk(a.batch, planes, [&](const WmmaPlanes<scalar_t>& pl, int64_t samples) {
    FR_LAUNCH((plane_tile_wmma_kernel<scalar_t>), plane_grid(samples, a.positions, tc::kQueries),
              dim3(kThreads), 0, stream, a, pl);
    if (a.channels > 0)
      FR_LAUNCH((weighted_sum_wmma_kernel<scalar_t, Grad::kG>),
                tile_grid(samples, a.positions, a.channels, tc::kQueries, tc::kGradWidth), dim3(kThreads), 0, stream,
                a, pl);
    if (a.dim > 0) {
      const dim3 grid = tile_grid(samples, a.positions, a.dim, tc::kQueries, tc::kGradWidth);
      FR_LAUNCH((weighted_sum_wmma_kernel<scalar_t, Grad::kPhi>), grid, dim3(kThreads), 0, stream, a, pl);
      FR_LAUNCH((weighted_sum_wmma_kernel<scalar_t, Grad::kTheta>), grid, dim3(kThreads), 0, stream, a, pl);
    }
  });
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
