#pragma once
// Softmax non-local means device code, flash-style: the forward and the backward's four
// kernels, with launchers. Free of CUDA runtime and torch headers (nvcc, or g++ through
// csrc/emu/cuda_emu.h).
//
// Every kernel walks kTile x kTile tiles of the (query, key) plane and never stores more than
// one tile. A block has kThreads threads; thread t owns the tile row t / kRowThreads and the
// columns (t % kRowThreads) + kRowThreads * u. A logit tile is a sum over the width d taken in
// chunks of kTile, each chunk of queries and keys staged in shared memory; the row statistics
// of the softmax are reduced over a row's kRowThreads threads (adjacent lanes) by shuffles.
// Each block also owns kOutWidth columns of its output (channels of y or dg, or a slice of the
// width d of dtheta or dphi), accumulated in registers over the whole loop and written once:
// no atomics, deterministic results, any d and C (the grid tiles them).
//
//   forward   block (query tile, C slice, sample): online softmax over key tiles, y and lse.
//   row_dot   D_i = sum_c dy_ic y_ic.
//   grad<kG>     block (key tile, C slice, sample): dg_j = sum_i p_ij dy_i over query tiles.
//   grad<kPhi>   block (key tile, d slice, sample): dphi_j = scale sum_i ds_ij theta_i.
//   grad<kTheta> block (query tile, d slice, sample): dtheta_i = scale sum_j ds_ij phi_j.
// The backward recomputes p from the saved lse (and dp = dy . g for ds) in each kernel that
// needs it: more arithmetic than FlashAttention-2's fused dK/dV kernel, but fixed-size
// accumulators for every d and C.
// These are SIMT kernels (fp32 FMA, fp32 accumulation for fp16/bf16). On GPUs with bf16
// tensor cores (sm_80+) fp16/bf16 inputs run nlm_wmma_kernels.cuh instead.
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../kernels/nlm.h"

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

// ds[u] = scale * p_ij (dp_ij - D_i) with dp_ij = dy_i . g_j, same indices as probability_tile.
template <typename scalar_t, typename acc>
__device__ void logit_grad_tile(acc (&ds)[kTileCols], const Ptrs<scalar_t, acc>& a, int64_t b, int64_t q0,
                                int64_t k0, smem_ptr<acc> As, smem_ptr<acc> Bs) {
  const int64_t n = a.positions;
  acc p[kTileCols];
  probability_tile(p, a, b, q0, k0, As, Bs);
  tile_dot<scalar_t>(ds, a.grad_y + b * a.channels * n, a.g + b * a.channels * n, a.channels, n, q0, k0, As, Bs);
  const Lane ln = lane_of();
  const int64_t i = q0 + ln.row;
  const acc d = i < n ? a.row_dot[b * n + i] : acc(0);
  for (int u = 0; u < kTileCols; ++u) ds[u] = mn::scaled_logit_grad(p[u], ds[u], d, a.scale);
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

// D_i = sum_c dy_ic y_ic. A block owns kWarpSize consecutive rows of one sample (a lane each:
// coalesced loads) and splits the channels over its kRowDotWarps warps (warp w: channels w,
// w + kRowDotWarps, ...); their partial sums are added in warp order through shared memory
// (deterministic). One thread walking all C channels of its row alone gave B*N threads a chain
// of C loads each: 49 blocks of 128 threads at (8, 1024, 28x28).
constexpr int kRowDotWarps = 8;

template <typename scalar_t>
__global__ void __launch_bounds__(kRowDotWarps * kWarpSize) row_dot_kernel(Ptrs<scalar_t, acc_t<scalar_t>> a) {
  using acc = acc_t<scalar_t>;
  FR_SHARED(acc, partial, kRowDotWarps * kWarpSize);
  const int64_t n = a.positions;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t b = blockIdx.y, i = int64_t(blockIdx.x) * kWarpSize + lane;
  acc d = 0;
  if (i < n) {
    FR_GLOBAL(const scalar_t) dy = a.grad_y + b * a.channels * n + i;
    FR_GLOBAL(const scalar_t) y = a.y + b * a.channels * n + i;
    for (int64_t c = warp; c < a.channels; c += kRowDotWarps) d += acc(dy[c * n]) * acc(y[c * n]);
  }
  partial[warp * kWarpSize + lane] = d;
  __syncthreads();
  if (warp != 0 || i >= n) return;
  acc sum = 0;
  for (int w = 0; w < kRowDotWarps; ++w) sum += partial[w * kWarpSize + lane];
  FR_GLOBAL(acc) row_dot = a.row_dot;
  row_dot[b * n + i] = sum;
}

// The three gradient kernels share one loop: a block owns a tile of positions (keys for dg
// and dphi, queries for dtheta) and a slice of the output's width, and walks the tiles of the
// other axis; each step forms a tile T (p for dg, ds otherwise) and accumulates T (or its
// transpose) times a staged slice X of one input:
//   dg_j     = sum_i p_ij dy_i          (T^T, X = dy)
//   dphi_j   = sum_i ds_ij theta_i      (T^T, X = theta)
//   dtheta_i = sum_j ds_ij phi_j        (T,   X = phi)
enum class Grad { kG, kPhi, kTheta };

template <typename scalar_t, Grad kWhich>
__global__ void __launch_bounds__(kThreads) grad_kernel(Ptrs<scalar_t, acc_t<scalar_t>> a) {
  using acc = acc_t<scalar_t>;
  constexpr bool kByKey = kWhich != Grad::kTheta;  // the block's own positions are keys
  FR_SHARED(acc, As, kTile * kTile);
  FR_SHARED(acc, Bs, kTile * kTile);
  FR_SHARED(acc, Ts, kTile * kPad);
  FR_SHARED(acc, Xs, kOutWidth * kPad);
  const int64_t b = blockIdx.z, p0 = int64_t(blockIdx.x) * kTile, w0 = int64_t(blockIdx.y) * kOutWidth;
  const int64_t n = a.positions;
  const int64_t width = kWhich == Grad::kG ? a.channels : a.dim;
  FR_GLOBAL(const scalar_t) x = kWhich == Grad::kG ? a.grad_y : (kWhich == Grad::kPhi ? a.theta : a.phi);
  FR_GLOBAL(scalar_t) out = kWhich == Grad::kG ? a.grad_g : (kWhich == Grad::kPhi ? a.grad_phi : a.grad_theta);
  acc o[kOutCols] = {};
  for (int64_t other0 = 0; other0 < n; other0 += kTile) {
    const int64_t q0 = kByKey ? other0 : p0, k0 = kByKey ? p0 : other0;
    acc t[kTileCols];
    if (kWhich == Grad::kG)
      probability_tile(t, a, b, q0, k0, As, Bs);
    else
      logit_grad_tile(t, a, b, q0, k0, As, Bs);
    store_tile(Ts, t);
    stage(Xs, kPad, x + b * width * n, width, n, w0, kOutWidth, other0);
    __syncthreads();
    accumulate<kByKey>(o, Ts, Xs);
    __syncthreads();
  }
  store_output(out + b * width * n, o, acc(1), width, n, w0, p0);
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

template <typename scalar_t>
void launch_forward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  FR_LAUNCH(forward_kernel<scalar_t>, tile_grid(a.batch, a.positions, a.channels), dim3(kThreads), 0, stream, a);
}

template <typename scalar_t>
void launch_row_dot(const Ptrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  TORCH_CHECK(a.batch <= 65535, "nlm_gaussian: batch ", a.batch, " is too large for one launch (at most 65535)");
  const int64_t row_blocks = ceil_div<int64_t>(a.positions, kWarpSize);
  TORCH_CHECK(row_blocks <= INT32_MAX, "nlm_gaussian: too many positions for one launch");
  FR_LAUNCH(row_dot_kernel<scalar_t>, dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(a.batch)),
            dim3(kRowDotWarps * kWarpSize), 0, stream, a);
}

template <typename scalar_t>
void launch_backward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, cudaStream_t stream) {
  launch_row_dot(a, stream);
  if (a.channels > 0)
    FR_LAUNCH((grad_kernel<scalar_t, Grad::kG>), tile_grid(a.batch, a.positions, a.channels), dim3(kThreads), 0,
              stream, a);
  if (a.dim > 0) {
    const dim3 grid = tile_grid(a.batch, a.positions, a.dim);
    FR_LAUNCH((grad_kernel<scalar_t, Grad::kPhi>), grid, dim3(kThreads), 0, stream, a);
    FR_LAUNCH((grad_kernel<scalar_t, Grad::kTheta>), grid, dim3(kThreads), 0, stream, a);
  }
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
