#pragma once
// Softmax non-local means device code: the SIMT kernels, with launchers. Free of CUDA runtime
// and torch headers (nvcc, or g++ through csrc/emu/cuda_emu.h).
//
// Kernels work on kTile x kTile tiles of the (query, key) plane. A block has kThreads threads;
// thread t owns the tile row t / kRowThreads and the columns (t % kRowThreads) + kRowThreads * u.
// A logit tile is a sum over the width d taken in chunks of kTile, each chunk of queries and
// keys staged in shared memory; the row statistics of the softmax are reduced over a row's
// kRowThreads threads (adjacent lanes) by shuffles. Blocks that write an output own kOutWidth
// of its columns (channels of y or dg, or a slice of the width d of dtheta or dphi),
// accumulated in registers over the whole loop and written once: no atomics, deterministic
// results, any d and C (the grid tiles them).
//
//   forward (C <= kOutWidth)  block (query tile, sample): online softmax over key tiles, y, lse.
//   wider forward   plane_tile<false>  block (query tile, key tile, sample): the logits and
//                                      each row's max and sum over the tile, to the planes;
//                   weighted_sum<kY>   block (query tile, C slice, sample): lse from the row's
//                                      partials, y_i = sum_j exp(logit_ij - lse_i) g_j.
//   backward        row_dot            D_i = sum_c dy_ic y_ic, as partial sums over groups of
//                                      channels, added up where D_i is read;
//                   plane_tile<true>   p_ij and ds_ij = scale p_ij (dy_i . g_j - D_i), to the planes;
//                   weighted_sum<kG>     (key tile, C slice): dg_j = sum_i p_ij dy_i;
//                   weighted_sum<kPhi>   (key tile, d slice): dphi_j = sum_i ds_ij theta_i;
//                   weighted_sum<kTheta> (query tile, d slice): dtheta_i = sum_j ds_ij phi_j.
// These are SIMT kernels (FMA in the accumulation type: float for fp16/bf16/fp32, double for
// fp64). On GPUs with bf16 tensor cores (sm_80+) fp16/bf16 inputs (and fp32 where tf32 is
// allowed) run nlm_mma_forward*.cuh and nlm_mma_backward*.cuh instead, which hold no planes.
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../kernels/nlm.h"
#include "nlm_row_dot_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

using ::fastrobust::nlm::Ptrs;
namespace mn = ::fastrobust::nlm;

constexpr int kTile = 32;                          // queries and keys per tile; reduction chunk
constexpr int kPad = kTile + 1;                    // row stride of the tiles read across rows
constexpr int kThreads = 128;
constexpr int kRowThreads = kThreads / kTile;      // threads per tile row (adjacent lanes)
constexpr int kTileCols = kTile / kRowThreads;     // tile columns per thread
constexpr int kOutWidth = 64;                      // output columns per block
constexpr int kOutCols = kOutWidth / kRowThreads;  // output columns per thread
static_assert(kTile % kRowThreads == 0 && kOutWidth % kRowThreads == 0, "tile shape");
static_assert(kWarpSize % kRowThreads == 0, "a tile row's threads must share a warp");

// This thread's tile row and first column (its columns are col + kRowThreads * u).
struct Lane {
  int row, col;
};

__device__ __forceinline__ Lane lane_of() {
  return {static_cast<int>(threadIdx.x) / kRowThreads, static_cast<int>(threadIdx.x) % kRowThreads};
}

// Reduction over the kRowThreads threads of a tile row.
template <typename T, typename Op>
__device__ __forceinline__ T row_reduce(T v, Op op) {
  for (int offset = 1; offset < kRowThreads; offset *= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// dst[w * stride + t] = src[(w0 + w) * n + p0 + t] for w < rows, t < kCols, where src is one
// sample's (width, n) slice; 0 outside it. Consecutive threads read consecutive positions.
template <int kCols = kTile, typename scalar_t, typename acc>
__device__ __forceinline__ void stage(smem_ptr<acc> dst, int stride, FR_GLOBAL(const scalar_t) src, int64_t width,
                                      int64_t n, int64_t w0, int rows, int64_t p0) {
  for (int e = threadIdx.x; e < rows * kCols; e += blockDim.x) {
    const int w = e / kCols, t = e % kCols;
    const int64_t ch = w0 + w, pos = p0 + t;
    dst[w * stride + t] = (ch < width && pos < n) ? acc(src[ch * n + pos]) : acc(0);
  }
}

// s[u] = sum_w A[w, a0 + row] * B[w, b0 + col + kRowThreads u] over the width, A and B one
// sample's (width, n) slices (0 outside them). Every thread of the block must call it.
template <typename scalar_t, typename acc>
__device__ void tile_dot(acc (&s)[kTileCols], FR_GLOBAL(const scalar_t) A, FR_GLOBAL(const scalar_t) B, int64_t width,
                         int64_t n, int64_t a0, int64_t b0, smem_ptr<acc> As, smem_ptr<acc> Bs) {
  const Lane ln = lane_of();
  for (int u = 0; u < kTileCols; ++u) s[u] = acc(0);
  for (int64_t w0 = 0; w0 < width; w0 += kTile) {
    stage(As, kTile, A, width, n, w0, kTile, a0);
    stage(Bs, kTile, B, width, n, w0, kTile, b0);
    __syncthreads();
    for (int w = 0; w < kTile; ++w) {
      const acc x = As[w * kTile + ln.row];
      for (int u = 0; u < kTileCols; ++u) s[u] += x * Bs[w * kTile + ln.col + kRowThreads * u];
    }
    FR_COUNT_FMA(kTile * kTileCols);
    __syncthreads();
  }
}

// p[u] = p_ij for i = q0 + row, j = k0 + col + kRowThreads u, from the saved lse; 0 outside
// the N x N plane (padded queries must not reach dg or dphi).
template <typename scalar_t, typename acc>
__device__ void probability_tile(acc (&p)[kTileCols], const Ptrs<scalar_t, acc>& a, int64_t b, int64_t q0,
                                 int64_t k0, smem_ptr<acc> As, smem_ptr<acc> Bs) {
  const int64_t n = a.positions;
  tile_dot<scalar_t>(p, a.theta + b * a.dim * n, a.phi + b * a.dim * n, a.dim, n, q0, k0, As, Bs);
  const Lane ln = lane_of();
  const int64_t i = q0 + ln.row;
  const acc lse = i < n ? a.lse[b * n + i] : acc(0);
  for (int u = 0; u < kTileCols; ++u) {
    const int64_t j = k0 + ln.col + kRowThreads * u;
    p[u] = (i < n && j < n) ? mn::probability(a.scale * p[u], lse) : acc(0);
  }
}

// The thread's tile values into Ts (row-major, row stride kPad).
template <typename acc>
__device__ __forceinline__ void store_tile(smem_ptr<acc> Ts, const acc (&t)[kTileCols]) {
  const Lane ln = lane_of();
  for (int u = 0; u < kTileCols; ++u) Ts[ln.row * kPad + ln.col + kRowThreads * u] = t[u];
}

// out[c] += sum_t T(row, t) * Xs[(col + kRowThreads c) * kPad + t], with T(row, t) = Ts[row][t],
// or Ts[t][row] when kTransposed (the thread's row is then a tile column: a key).
template <bool kTransposed, typename acc>
__device__ __forceinline__ void accumulate(acc (&out)[kOutCols], smem_ptr<acc> Ts, smem_ptr<acc> Xs) {
  const Lane ln = lane_of();
  for (int t = 0; t < kTile; ++t) {
    const acc w = kTransposed ? Ts[t * kPad + ln.row] : Ts[ln.row * kPad + t];
    for (int c = 0; c < kOutCols; ++c) out[c] += w * Xs[(ln.col + kRowThreads * c) * kPad + t];
  }
  FR_COUNT_FMA(kTile * kOutCols);
}

// dst[(w0 + col + kRowThreads c) * n + p0 + row] = o[c] * factor, inside one sample's (width, n) slice.
template <typename scalar_t, typename acc>
__device__ __forceinline__ void store_output(FR_GLOBAL(scalar_t) dst, const acc (&o)[kOutCols], acc factor,
                                             int64_t width, int64_t n, int64_t w0, int64_t p0) {
  const Lane ln = lane_of();
  const int64_t pos = p0 + ln.row;
  if (pos >= n) return;
  for (int c = 0; c < kOutCols; ++c) {
    const int64_t ch = w0 + ln.col + kRowThreads * c;
    if (ch < width) dst[ch * n + pos] = static_cast<scalar_t>(o[c] * factor);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(Ptrs<scalar_t, acc_t<scalar_t>> a) {
  using acc = acc_t<scalar_t>;
  FR_SHARED(acc, As, kTile * kTile);
  FR_SHARED(acc, Bs, kTile * kTile);
  FR_SHARED(acc, Ps, kTile * kPad);
  FR_SHARED(acc, Vs, kOutWidth * kPad);
  const Lane ln = lane_of();
  const int64_t b = blockIdx.z, q0 = int64_t(blockIdx.x) * kTile, c0 = int64_t(blockIdx.y) * kOutWidth;
  const int64_t n = a.positions;
  FR_GLOBAL(const scalar_t) g = a.g + b * a.channels * n;
  acc o[kOutCols] = {};
  acc m = mn::neg_inf<acc>(), l = 0;
  for (int64_t k0 = 0; k0 < n; k0 += kTile) {
    acc s[kTileCols];
    tile_dot<scalar_t>(s, a.theta + b * a.dim * n, a.phi + b * a.dim * n, a.dim, n, q0, k0, As, Bs);
    acc tile_max = mn::neg_inf<acc>();
    for (int u = 0; u < kTileCols; ++u) {
      s[u] = k0 + ln.col + kRowThreads * u < n ? a.scale * s[u] : mn::neg_inf<acc>();
      tile_max = mn::RowMax{}(tile_max, s[u]);
    }
    const acc m_new = mn::RowMax{}(m, row_reduce(tile_max, mn::RowMax{}));
    const acc alpha = mn::rescale(m, m_new);
    acc sum = 0;
    for (int u = 0; u < kTileCols; ++u) {
      s[u] = mn::shifted_weight(s[u], m_new);
      sum += s[u];
    }
    l = l * alpha + row_reduce(sum, SumOp{});
    m = m_new;
    for (int c = 0; c < kOutCols; ++c) o[c] *= alpha;
    store_tile(Ps, s);
    stage(Vs, kPad, g, a.channels, n, c0, kOutWidth, k0);
    __syncthreads();
    accumulate<false>(o, Ps, Vs);
    __syncthreads();
  }
  store_output<scalar_t>(a.out + b * a.channels * n, o, acc(1) / l, a.channels, n, c0, q0);
  const int64_t i = q0 + ln.row;
  FR_GLOBAL(acc) lse = a.lse;
  if (blockIdx.y == 0 && ln.col == 0 && i < n) lse[b * n + i] = mn::row_lse(m, l);
}

// The (query, key) planes that the wide forward and the backward keep in global memory, for
// the samples sample0 .. sample0 + gridDim.z - 1 of the batch (blockIdx.z = s, the sample's
// place in the chunk; the batch runs in chunks of `chunk` samples within a memory budget,
// csrc/cuda/nlm_dispatch.h):
//   forward:  logits[s][i][j] = scale theta_i . phi_j and, per tile t of 32 keys,
//             partials[s][t][0][i] = the tile's max of row i, partials[s][t][1][i] = the sum of
//             exp(logit - that max) over the tile;
//   backward: weights[s][i][j] = p_ij and logit_grads[s][i][j] = ds_ij (scale included).
// Each logit (and each dp = dy . g) is then computed once for the whole op, and the outputs are
// plain products over the planes, a slice of output columns per block. A FlashAttention-style
// kernel, whose outputs here are too wide for one block's registers, would recompute the
// logits in every output slice instead: a d-deep product per slice of C (and a C-deep dp per
// slice of d), several times the minimal work where C and d are hundreds of columns wide,
// against a few N^2 words per sample here (written once, read once per output).
template <typename acc>
struct Planes {
  int64_t sample0, chunk;
  acc* logits;
  acc* partials;
  acc* weights;
  acc* logit_grads;
};

// The dispatch's buffers, untyped until the SIMT kernels give them their accumulation type.
struct PlaneBuffers {
  int64_t chunk;
  void *logits, *partials, *weights, *logit_grads;
};

template <typename acc>
Planes<acc> typed_planes(const PlaneBuffers& buf) {
  return {0, buf.chunk, static_cast<acc*>(buf.logits), static_cast<acc*>(buf.partials),
          static_cast<acc*>(buf.weights), static_cast<acc*>(buf.logit_grads)};
}

// Calls launch(planes, samples) for each chunk of the batch, planes.sample0 its first sample.
template <typename P, typename F>
void for_each_chunk(int64_t batch, P planes, F launch) {
  for (int64_t s0 = 0; s0 < batch; s0 += planes.chunk) {
    planes.sample0 = s0;
    launch(planes, std::min(planes.chunk, batch - s0));
  }
}

// lse_i of sample b (place s in the chunk) from its row's per-tile partials, combined in key
// order as the online softmax does (its max and sum of shifted weights into m and l); written to
// a.lse by the blocks of the first output slice. 0 for rows past N.
template <typename scalar_t, typename acc>
__device__ acc combined_lse(const Ptrs<scalar_t, acc>& a, const acc* all_partials, int64_t s, int64_t b, int64_t i,
                            acc& m, acc& l) {
  const int64_t n = a.positions;
  m = 0;
  l = 1;
  if (i >= n) return acc(0);
  const int64_t tiles = ceil_div<int64_t>(n, kTile);
  FR_GLOBAL(const acc) partials = all_partials + s * tiles * 2 * n;
  m = mn::neg_inf<acc>();
  l = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const acc tile_m = partials[t * 2 * n + i], tile_l = partials[t * 2 * n + n + i];
    const acc m_new = mn::RowMax{}(m, tile_m);
    l = l * mn::rescale(m, m_new) + tile_l * mn::rescale(tile_m, m_new);
    m = m_new;
  }
  const acc lse = mn::row_lse(m, l);
  FR_GLOBAL(acc) lse_out = a.lse;
  if (blockIdx.y == 0) lse_out[b * n + i] = lse;
  return lse;
}

// One block: the kTile x kTile tile (blockIdx.x, blockIdx.y) of the (query, key) plane of
// sample s: the logits (and for the backward p, dp and ds), staged in shared memory and written
// a row of the tile per warp step (coalesced); the forward's row partials are reduced over a
// row's kRowThreads threads.
template <typename scalar_t, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    plane_tile_kernel(Ptrs<scalar_t, acc_t<scalar_t>> a, Planes<acc_t<scalar_t>> pl) {
  using acc = acc_t<scalar_t>;
  FR_SHARED(acc, As, kTile * kTile);
  FR_SHARED(acc, Bs, kTile * kTile);
  FR_SHARED(acc, Ts, kTile * kPad);                    // logits, or p
  FR_SHARED(acc, Us, kBackward ? kTile * kPad : 1);    // ds
  const Lane ln = lane_of();
  const int64_t s = blockIdx.z, b = pl.sample0 + s, n = a.positions;
  const int64_t q0 = int64_t(blockIdx.x) * kTile, k0 = int64_t(blockIdx.y) * kTile, i = q0 + ln.row;
  acc t[kTileCols];
  if constexpr (kBackward) {
    acc dp[kTileCols];
    probability_tile(t, a, b, q0, k0, As, Bs);
    tile_dot<scalar_t>(dp, a.grad_y + b * a.channels * n, a.g + b * a.channels * n, a.channels, n, q0, k0, As, Bs);
    const acc d = i < n ? row_dot_of(a, b, i) : acc(0);
    for (int u = 0; u < kTileCols; ++u) dp[u] = mn::scaled_logit_grad(t[u], dp[u], d, a.scale);
    store_tile(Us, dp);
  } else {
    tile_dot<scalar_t>(t, a.theta + b * a.dim * n, a.phi + b * a.dim * n, a.dim, n, q0, k0, As, Bs);
    acc m = mn::neg_inf<acc>();
    for (int u = 0; u < kTileCols; ++u) {
      t[u] = k0 + ln.col + kRowThreads * u < n ? a.scale * t[u] : mn::neg_inf<acc>();
      m = mn::RowMax{}(m, t[u]);
    }
    m = row_reduce(m, mn::RowMax{});
    acc l = 0;
    for (int u = 0; u < kTileCols; ++u) l += mn::shifted_weight(t[u], m);
    l = row_reduce(l, SumOp{});
    FR_GLOBAL(acc) partials = pl.partials + (s * gridDim.y + blockIdx.y) * 2 * n;
    if (ln.col == 0 && i < n) {
      partials[i] = m;
      partials[n + i] = l;
    }
  }
  store_tile(Ts, t);
  __syncthreads();
  FR_GLOBAL(acc) first = (kBackward ? pl.weights : pl.logits) + s * n * n;
  for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
    const int r = e / kTile, c = e % kTile;
    const int64_t row = q0 + r, col = k0 + c;
    if (row < n && col < n) {
      first[row * n + col] = Ts[r * kPad + c];
      if constexpr (kBackward) {
        FR_GLOBAL(acc) logit_grads = pl.logit_grads + s * n * n;
        logit_grads[row * n + col] = Us[r * kPad + c];
      }
    }
  }
}

// Which output a weighted-sum kernel computes: y (forward, over C > kOutWidth channels) or one
// of the three gradients; and, for each, whether the block's own positions are keys, whether
// the output is C wide (else d), its input X and its output (both kernel families).
enum class Grad { kY, kG, kPhi, kTheta };

template <Grad kWhich>
constexpr bool kOwnKeys = kWhich == Grad::kG || kWhich == Grad::kPhi;
template <Grad kWhich>
constexpr bool kChannelWide = kWhich == Grad::kY || kWhich == Grad::kG;

template <Grad kWhich, typename scalar_t, typename acc>
__device__ __forceinline__ const scalar_t* weighted_sum_input(const Ptrs<scalar_t, acc>& a) {
  return kWhich == Grad::kY ? a.g : (kWhich == Grad::kG ? a.grad_y : (kWhich == Grad::kPhi ? a.theta : a.phi));
}

template <Grad kWhich, typename scalar_t, typename acc>
__device__ __forceinline__ scalar_t* weighted_sum_output(const Ptrs<scalar_t, acc>& a) {
  return kWhich == Grad::kY ? a.out
                            : (kWhich == Grad::kG ? a.grad_g : (kWhich == Grad::kPhi ? a.grad_phi : a.grad_theta));
}

// A block owns a tile of positions (queries for y and dtheta, keys for dg and dphi) and a
// slice of the output's width, and walks the tiles of the other axis; each step stages a plane
// tile T and accumulates T (or its transpose) times a staged slice X of one input:
//   y_i      = sum_j p_ij g_j           (T = exp(logit - lse) from the logits, X = g)
//   dg_j     = sum_i p_ij dy_i          (T^T = weights^T, X = dy)
//   dphi_j   = sum_i ds_ij theta_i      (T^T = logit_grads^T, X = theta)
//   dtheta_i = sum_j ds_ij phi_j        (T = logit_grads, X = phi)
// y's kernel also forms each row's lse, max and sum from the plane kernel's per-tile partials
// (p from the max and sum: normalized_weight).
template <typename scalar_t, Grad kWhich>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_kernel(Ptrs<scalar_t, acc_t<scalar_t>> a, Planes<acc_t<scalar_t>> pl) {
  using acc = acc_t<scalar_t>;
  constexpr bool kByKey = kOwnKeys<kWhich>;
  FR_SHARED(acc, Ts, kTile * kPad);
  FR_SHARED(acc, Xs, kOutWidth * kPad);
  FR_SHARED(acc, row_lse, kTile);  // y's rows: lse, max and 1 / sum (normalized_weight)
  FR_SHARED(acc, row_max, kWhich == Grad::kY ? kTile : 1);
  FR_SHARED(acc, row_inv_sum, kWhich == Grad::kY ? kTile : 1);
  const int64_t s = blockIdx.z, b = pl.sample0 + s, n = a.positions;
  const int64_t p0 = int64_t(blockIdx.x) * kTile, w0 = int64_t(blockIdx.y) * kOutWidth;
  const int64_t width = kChannelWide<kWhich> ? a.channels : a.dim;
  FR_GLOBAL(const scalar_t) x = weighted_sum_input<kWhich>(a) + b * width * n;
  FR_GLOBAL(scalar_t) out = weighted_sum_output<kWhich>(a) + b * width * n;
  FR_GLOBAL(const acc) plane = (kWhich == Grad::kY ? pl.logits : (kWhich == Grad::kG ? pl.weights : pl.logit_grads)) +
                               s * n * n;
  if constexpr (kWhich == Grad::kY) {
    if (threadIdx.x < kTile) {
      acc m, l;
      row_lse[threadIdx.x] = combined_lse(a, pl.partials, s, b, p0 + threadIdx.x, m, l);
      row_max[threadIdx.x] = m;
      row_inv_sum[threadIdx.x] = acc(1) / l;
    }
    __syncthreads();
  }
  acc o[kOutCols] = {};
  for (int64_t o0 = 0; o0 < n; o0 += kTile) {
    if constexpr (kWhich == Grad::kY) {
      for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
        const int r = e / kTile, t = e % kTile;
        const int64_t i = p0 + r, j = o0 + t;
        Ts[r * kPad + t] = i < n && j < n ? mn::normalized_weight(acc(plane[i * n + j]), acc(row_max[r]),
                                                                  acc(row_inv_sum[r]), acc(row_lse[r]))
                                          : acc(0);
      }
    } else if constexpr (kByKey) {
      stage(Ts, kPad, plane, n, n, o0, kTile, p0);  // Ts[t][own] = plane[o0 + t][p0 + own]
    } else {
      stage(Ts, kPad, plane, n, n, p0, kTile, o0);  // Ts[own][t] = plane[p0 + own][o0 + t]
    }
    stage(Xs, kPad, x, width, n, w0, kOutWidth, o0);
    __syncthreads();
    accumulate<kByKey>(o, Ts, Xs);
    __syncthreads();
  }
  store_output(out, o, acc(1), width, n, w0, p0);
}

// Grid of (position tiles of `tile`, slices of `slice` output columns, samples).
inline dim3 tile_grid(int64_t batch, int64_t positions, int64_t width, int64_t tile = kTile,
                      int64_t slice = kOutWidth) {
  const int64_t tiles = ceil_div<int64_t>(positions, tile);
  const int64_t slices = width > 0 ? ceil_div<int64_t>(width, slice) : 1;
  TORCH_CHECK(batch <= 65535, "nlm_gaussian: batch ", batch, " is too large for one launch (at most 65535)");
  TORCH_CHECK(tiles <= INT32_MAX && slices <= 65535, "nlm_gaussian: too many positions or channels for one launch");
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(slices), static_cast<unsigned>(batch));
}

// Grid of the plane kernels: (query tiles of `query_tile`, key tiles of kTile, samples).
inline dim3 plane_grid(int64_t samples, int64_t positions, int64_t query_tile) {
  const int64_t query_tiles = ceil_div<int64_t>(positions, query_tile);
  const int64_t key_tiles = ceil_div<int64_t>(positions, kTile);
  TORCH_CHECK(samples <= 65535, "nlm_gaussian: batch ", samples, " is too large for one launch (at most 65535)");
  TORCH_CHECK(query_tiles <= INT32_MAX && key_tiles <= 65535, "nlm_gaussian: too many positions for one launch");
  return dim3(static_cast<unsigned>(query_tiles), static_cast<unsigned>(key_tiles), static_cast<unsigned>(samples));
}

// Up to kOutWidth channels: one pass (online softmax, y and lse). Wider: the logits plane with
// per-tile row partials, then y (and lse) in slices of kOutWidth channels over it.
template <typename scalar_t>
void launch_forward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, const PlaneBuffers& buffers, cudaStream_t stream) {
  if (a.channels <= kOutWidth) {
    FR_LAUNCH(forward_kernel<scalar_t>, tile_grid(a.batch, a.positions, a.channels), dim3(kThreads), 0, stream, a);
    return;
  }
  using acc = acc_t<scalar_t>;
  for_each_chunk(a.batch, typed_planes<acc>(buffers), [&](const Planes<acc>& pl, int64_t samples) {
    FR_LAUNCH((plane_tile_kernel<scalar_t, false>), plane_grid(samples, a.positions, kTile), dim3(kThreads), 0,
              stream, a, pl);
    FR_LAUNCH((weighted_sum_kernel<scalar_t, Grad::kY>), tile_grid(samples, a.positions, a.channels), dim3(kThreads),
              0, stream, a, pl);
  });
}

// D first (whole batch), then per chunk the p and ds planes and the three gradients over them.
template <typename scalar_t>
void launch_backward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, const PlaneBuffers& buffers, cudaStream_t stream) {
  launch_row_dot(a, stream);
  using acc = acc_t<scalar_t>;
  for_each_chunk(a.batch, typed_planes<acc>(buffers), [&](const Planes<acc>& pl, int64_t samples) {
    FR_LAUNCH((plane_tile_kernel<scalar_t, true>), plane_grid(samples, a.positions, kTile), dim3(kThreads), 0, stream,
              a, pl);
    if (a.channels > 0)
      FR_LAUNCH((weighted_sum_kernel<scalar_t, Grad::kG>), tile_grid(samples, a.positions, a.channels),
                dim3(kThreads), 0, stream, a, pl);
    if (a.dim > 0) {
      const dim3 grid = tile_grid(samples, a.positions, a.dim);
      FR_LAUNCH((weighted_sum_kernel<scalar_t, Grad::kPhi>), grid, dim3(kThreads), 0, stream, a, pl);
      FR_LAUNCH((weighted_sum_kernel<scalar_t, Grad::kTheta>), grid, dim3(kThreads), 0, stream, a, pl);
    }
  });
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
