#pragma once
// Softmax non-local means on tensor cores, for fp16 and bf16 inputs (sm_80+): every product
// of a tile is a 16x16x16 warp matrix operation with float accumulators; the softmax maths
// between products is SIMT code on float tiles in shared memory.
//
// A block has 4 warps and owns kQueries = 64 positions of its own (warp w: rows 16w .. 16w + 15
// in every step, so a warp's SIMT rows and matrix tiles are the same) and a slice of the
// columns of its output; it walks the other positions in tiles of kKeys = 32.
//
// Forward, up to kOutWidth = 64 channels: one pass (own positions are queries). Per key tile:
//   1. S (64 x 32) accumulates over the width d in chunks of 32, theta and phi staged in
//      shared memory as 16-bit values (zero outside the sample, so any d, N);
//   2. each row's two lanes (16 keys each) update the row's max m and sum l, write
//      P = exp(scale S - m) as 16-bit values and rescale the row's output accumulator by
//      exp(m_old - m); the accumulators live in shared memory (float), since which lane holds
//      which entry of a wmma fragment is unspecified;
//   3. O (64 x kOutWidth) += P (64 x 32) g^T (32 x kOutWidth).
// Device code compiled for an architecture without bf16 tensor cores (FR_HAS_WMMA = 0) has
// kernels whose body is a trap: the host launches these kernels only where
// tensor_core_kernels_usable (csrc/ops/nlm.h) says their compiled code has a body.
//
// P is rounded to the input type before the product, as FlashAttention does; l sums the
// float values. Wider g: the same kernel without outputs computes the lse, then
// slice_wmma_kernel<kY> forms y in slices of kGradWidth = 128 channels.
//
// slice_wmma_kernel (y in two-pass forwards, and the backward: the SIMT kernels' three
// gradient kernels, with the same recomputation of p and ds from the saved lse and D): the
// logit tile S, the tile dP = dy . g and the product T X on tensor cores, kGradWidth output
// columns per block, the accumulators in wmma fragments (no rescaling), written through
// shared memory at the end. T (p or ds) is rounded to the input type before its product. The
// maths per entry is kernels/nlm.h's.
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
constexpr int kHalfKeys = kKeys / 2;             // keys per lane in the softmax step
// Leading dimensions of the shared tiles: a multiple of 16 bytes (wmma), padded off a
// multiple of 128 bytes against bank conflicts.
constexpr int kLdTheta = kQueries + 8;           // theta chunk, col-major A: [k][query]
constexpr int kLdKey = kKeys + 8;                // phi chunk [k][key]; P [query][key]; g [channel][key]
constexpr int kLdS = kKeys + 4;                  // float S [query][key]
constexpr int kLdO = kOutWidth + 4;              // float O [query][channel]
// The gradient kernels own twice as many output columns per block as the forward: their
// accumulators stay in registers (no rescaling), and each output slice recomputes S (and dP)
// over the whole N x N plane, so wider slices mean proportionally fewer recomputations.
constexpr int kGradWidth = 2 * kOutWidth;
// One float buffer serves the S (and dP) tiles and, at the end, the output tile.
constexpr int kFloatTile = 2 * kQueries * kLdS > kQueries * kLdO ? 2 * kQueries * kLdS : kQueries * kLdO;
static_assert(kThreads == kWarps * kWarpSize, "one warp per 16 query rows");
static_assert(kChunk % kWmmaDim == 0, "whole warp products per chunk");
static_assert(kQueries == kWarps * kWmmaDim && kKeys % kWmmaDim == 0 && kOutWidth % kWmmaDim == 0, "tile shape");
static_assert(kWarpSize == 2 * kWmmaDim, "two lanes per softmax row");

// The softmax steps give each query row two lanes: lanes 2k and 2k + 1 of warp w hold row
// 16w + k, each walking 16 keys (or half the output columns). The float tiles' row pitches
// (kLdS, kLdO) are 4 modulo 32, as wmma wants multiples of 4, so rows k and k + 8 and the two
// halves of a row meet in one bank when every lane reads the same column: each lane starts its
// walk at its own offset instead (0-3; the walk wraps around its half), which spreads the 32
// lanes over the 32 banks, and the 16-bit tiles written in the same walk (kLdKey) stay
// conflict-free as well.
FR_HOST_DEVICE int walk_offset(int row, int half) { return ((row >> 3) & 1) + 2 * half; }
static_assert(kLdS % kWarpSize == 4 && kLdO % kWarpSize == 4, "walk_offset assumes pitches of 4 modulo 32");

}  // namespace tc

#if FR_HAS_WMMA
using FragF = wmma::fragment<wmma::accumulator, kWmmaDim, kWmmaDim, kWmmaDim, float>;

// dst[r * kLdS + t] = sum_k own[k, p0 + r] other[k, o0 + t] for the calling warp's 16 rows r and
// the kKeys columns t, own and other one sample's (width, n) slices (0 outside them), through
// chunks of kChunk rows staged in Own ([k][position], kLdTheta) and Oth ([k][position], kLdKey),
// each consumed as kChunk / 16 warp products. Every thread of the block must call it.
template <typename scalar_t>
__device__ void tile_product(smem_ptr<float> dst, FR_GLOBAL(const scalar_t) own, FR_GLOBAL(const scalar_t) other,
                             int64_t width, int64_t n, int64_t p0, int64_t o0, smem_ptr<scalar_t> Own,
                             smem_ptr<scalar_t> Oth) {
  using namespace tc;
  using E = typename wmma_element<scalar_t>::type;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  FragF acc[kKeys / kWmmaDim];
  for (auto& f : acc) wmma::fill_fragment(f, 0.f);
  for (int64_t k0 = 0; k0 < width; k0 += kChunk) {
    stage<kQueries>(Own, kLdTheta, own, width, n, k0, kChunk, p0);
    stage<kKeys>(Oth, kLdKey, other, width, n, k0, kChunk, o0);
    __syncthreads();
    for (int kk = 0; kk < kChunk / kWmmaDim; ++kk) {
      wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::col_major> fa;
      wmma::load_matrix_sync(fa, as_wmma(Own + kk * kWmmaDim * kLdTheta + warp * kWmmaDim), kLdTheta);
      for (int t = 0; t < kKeys / kWmmaDim; ++t) {
        wmma::fragment<wmma::matrix_b, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, as_wmma(Oth + kk * kWmmaDim * kLdKey + t * kWmmaDim), kLdKey);
        wmma::mma_sync(acc[t], fa, fb, acc[t]);
      }
    }
    __syncthreads();  // before the next chunk is staged
  }
  for (int t = 0; t < kKeys / kWmmaDim; ++t)
    wmma::store_matrix_sync(dst + warp * kWmmaDim * kLdS + t * kWmmaDim, acc[t], kLdS, wmma::mem_row_major);
}

// acc[f] += T (the warp's 16 rows x kKeys, row-major, kLdKey) times X (kKeys x kWidth,
// stored [column][key] with kLdKey), for the kWidth / 16 column blocks f.
template <int kWidth, typename scalar_t>
__device__ __forceinline__ void accumulate_product(FragF (&acc)[kWidth / kWmmaDim], smem_ptr<scalar_t> Ts,
                                                   smem_ptr<scalar_t> Xs) {
  using namespace tc;
  using E = typename wmma_element<scalar_t>::type;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  for (int f = 0; f < kWidth / kWmmaDim; ++f)
    for (int kk = 0; kk < kKeys / kWmmaDim; ++kk) {
      wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::row_major> ft;
      wmma::fragment<wmma::matrix_b, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::col_major> fx;
      wmma::load_matrix_sync(ft, as_wmma(Ts + warp * kWmmaDim * kLdKey + kk * kWmmaDim), kLdKey);
      wmma::load_matrix_sync(fx, as_wmma(Xs + f * kWmmaDim * kLdKey + kk * kWmmaDim), kLdKey);
      wmma::mma_sync(acc[f], ft, fx, acc[f]);
    }
}
#endif

// out[(w0 + c) * n + p0 + r] = Fs[r * kLdO + c] * (row_inv ? row_inv[r] : 1) inside one
// sample's (width, n) slice; consecutive threads write consecutive positions.
template <typename scalar_t>
__device__ __forceinline__ void store_tile_output(FR_GLOBAL(scalar_t) out, smem_ptr<float> Fs, smem_ptr<float> row_inv,
                                                  int64_t width, int64_t n, int64_t w0, int64_t p0) {
  using namespace tc;
  for (int e = threadIdx.x; e < kOutWidth * kQueries; e += blockDim.x) {
    const int c = e / kQueries, r = e % kQueries;
    if (w0 + c < width && p0 + r < n)
      out[(w0 + c) * n + p0 + r] = static_cast<scalar_t>(Fs[r * kLdO + c] * (row_inv ? row_inv[r] : 1.f));
  }
}

// kWithOutput: y and lse in one pass over the keys; otherwise only the lse (the first pass of
// the two-pass forward, whose outputs come from slice_wmma_kernel<kY>).
template <typename scalar_t, bool kWithOutput>
__global__ void __launch_bounds__(kThreads) forward_wmma_kernel(Ptrs<scalar_t, float> a) {
#if FR_HAS_WMMA
  using namespace tc;
  FR_SHARED_ALIGNED(32, scalar_t, Ths, kChunk * kLdTheta);
  FR_SHARED_ALIGNED(32, scalar_t, Phs, kChunk * kLdKey);
  FR_SHARED_ALIGNED(32, scalar_t, Ps, kQueries * kLdKey);
  FR_SHARED_ALIGNED(32, scalar_t, Gs, kOutWidth * kLdKey);
  FR_SHARED_ALIGNED(32, float, Ss, kQueries * kLdS);
  FR_SHARED_ALIGNED(32, float, Os, kQueries * kLdO);
  FR_SHARED(float, row_inv, kQueries);

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int row = warp * kWmmaDim + lane / 2, half = lane % 2;  // this lane's softmax row and keys
  const int rot = walk_offset(row, half);
  const int64_t b = blockIdx.z, q0 = int64_t(blockIdx.x) * kQueries, c0 = int64_t(blockIdx.y) * kOutWidth;
  const int64_t n = a.positions;
  FR_GLOBAL(const scalar_t) theta = a.theta + b * a.dim * n;
  FR_GLOBAL(const scalar_t) phi = a.phi + b * a.dim * n;
  FR_GLOBAL(const scalar_t) g = a.g + b * a.channels * n;
  for (int e = threadIdx.x; e < kQueries * kLdO; e += blockDim.x) Os[e] = 0.f;
  // The zeroing above is spread over the block, the rescaling below is per warp: a barrier
  // between them (the products' barriers do not run when d = 0).
  __syncthreads();
  float m = mn::neg_inf<float>(), l = 0.f;

  for (int64_t k0 = 0; k0 < n; k0 += kKeys) {
    if (kWithOutput) stage<kKeys>(Gs, kLdKey, g, a.channels, n, c0, kOutWidth, k0);
    tile_product(Ss, theta, phi, a.dim, n, q0, k0, Ths, Phs);
    __syncwarp();

    // Online softmax of the row over this tile: the lane's 16 keys, then its partner's.
    float s[kHalfKeys];
    float tile_max = mn::neg_inf<float>();
    for (int u = 0; u < kHalfKeys; ++u) {
      const int j = half * kHalfKeys + (u + rot) % kHalfKeys;
      s[u] = k0 + j < n ? a.scale * Ss[row * kLdS + j] : mn::neg_inf<float>();
      tile_max = mn::RowMax{}(tile_max, s[u]);
    }
    const float m_new = mn::RowMax{}(m, mn::RowMax{}(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1)));
    const float alpha = mn::rescale(m, m_new);
    float sum = 0.f;
    for (int u = 0; u < kHalfKeys; ++u) {
      const float p = mn::shifted_weight(s[u], m_new);
      sum += p;
      if (kWithOutput) Ps[row * kLdKey + half * kHalfKeys + (u + rot) % kHalfKeys] = static_cast<scalar_t>(p);
    }
    l = l * alpha + sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    m = m_new;
    if (!kWithOutput) {
      __syncthreads();  // the next tile's products overwrite S
      continue;
    }
    for (int v = 0; v < kOutWidth / 2; ++v) Os[row * kLdO + half * (kOutWidth / 2) + (v + rot) % (kOutWidth / 2)] *= alpha;
    __syncthreads();  // g staged by the block; P and the rescaled O by the warp

    // the output accumulators round-trip through shared memory, where the rows were rescaled
    FragF o_acc[kOutWidth / kWmmaDim];
    for (int f = 0; f < kOutWidth / kWmmaDim; ++f)
      wmma::load_matrix_sync(o_acc[f], Os + warp * kWmmaDim * kLdO + f * kWmmaDim, kLdO, wmma::mem_row_major);
    accumulate_product<kOutWidth>(o_acc, Ps, Gs);
    for (int f = 0; f < kOutWidth / kWmmaDim; ++f)
      wmma::store_matrix_sync(Os + warp * kWmmaDim * kLdO + f * kWmmaDim, o_acc[f], kLdO, wmma::mem_row_major);
    __syncthreads();  // before the next tile restages g, theta, phi and rescales O
  }

  const int64_t i = q0 + row;
  if (half == 0) {
    row_inv[row] = 1.f / l;
    if (blockIdx.y == 0 && i < n) {
      a.lse[b * n + i] = mn::row_lse(m, l);
      if (!kWithOutput) a.row_max[b * n + i] = m;
    }
  }
  if (!kWithOutput) return;
  __syncthreads();
  store_tile_output<scalar_t>(a.out + b * a.channels * n, Os, row_inv, a.channels, n, c0, q0);
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// Which output a slice kernel computes: y (the second pass of the two-pass forward) or one of
// the three gradients.
enum class Slice { kY, kG, kPhi, kTheta };

// One block: kGradWidth columns of its output for kQueries own positions, from the tiles
// T (p or ds) of the other axis times a staged slice X of one input:
//   y_i      = sum_j p_ij g_j          (own = queries, X = g)
//   dg_j     = sum_i p_ij dy_i         (own = keys,    X = dy)
//   dphi_j   = sum_i ds_ij theta_i     (own = keys,    X = theta)
//   dtheta_i = sum_j ds_ij phi_j       (own = queries, X = phi)
// p comes from the saved lse (for y: exp(s - m) from the saved row max, times 1 / l at the
// end), so no rescaling: the accumulators stay in registers.
template <typename scalar_t, Slice kWhich>
__global__ void __launch_bounds__(kThreads) slice_wmma_kernel(Ptrs<scalar_t, float> a) {
#if FR_HAS_WMMA
  using namespace tc;
  constexpr bool kByKey = kWhich == Slice::kG || kWhich == Slice::kPhi;        // own positions are keys
  constexpr bool kLogitGrad = kWhich == Slice::kPhi || kWhich == Slice::kTheta;  // T = ds (else p)
  constexpr bool kChannels = kWhich == Slice::kY || kWhich == Slice::kG;         // output width C (else d)
  FR_SHARED_ALIGNED(32, scalar_t, Own, kChunk * kLdTheta);
  FR_SHARED_ALIGNED(32, scalar_t, Oth, kChunk * kLdKey);
  FR_SHARED_ALIGNED(32, scalar_t, Ts, kQueries * kLdKey);
  FR_SHARED_ALIGNED(32, scalar_t, Xs, kGradWidth * kLdKey);
  FR_SHARED_ALIGNED(32, float, Fs, kFloatTile);
  const smem_ptr<float> Ss = Fs;                       // logits, [own][other]
  const smem_ptr<float> Dps = Fs + kQueries * kLdS;    // dp = dy . g, [own][other]

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int row = warp * kWmmaDim + lane / 2, half = lane % 2, rot = walk_offset(row, half);
  const int64_t b = blockIdx.z, p0 = int64_t(blockIdx.x) * kQueries, w0 = int64_t(blockIdx.y) * kGradWidth;
  const int64_t n = a.positions;
  const int64_t width = kChannels ? a.channels : a.dim;
  FR_GLOBAL(const scalar_t) theta = a.theta + b * a.dim * n;
  FR_GLOBAL(const scalar_t) phi = a.phi + b * a.dim * n;
  FR_GLOBAL(const scalar_t) g = a.g + b * a.channels * n;
  FR_GLOBAL(const scalar_t) dy = kWhich == Slice::kY ? nullptr : a.grad_y + b * a.channels * n;
  FR_GLOBAL(const scalar_t) x =
      kWhich == Slice::kY ? g : (kWhich == Slice::kG ? dy : (kWhich == Slice::kPhi ? theta : phi));
  FR_GLOBAL(scalar_t) out = (kWhich == Slice::kY ? a.out
                                       : (kWhich == Slice::kG ? a.grad_g
                                                              : (kWhich == Slice::kPhi ? a.grad_phi : a.grad_theta))) +
                  b * width * n;
  FragF o_acc[kGradWidth / kWmmaDim];
  for (auto& f : o_acc) wmma::fill_fragment(f, 0.f);

  for (int64_t o0 = 0; o0 < n; o0 += kKeys) {
    stage<kKeys>(Xs, kLdKey, x, width, n, w0, kGradWidth, o0);
    tile_product(Ss, kByKey ? phi : theta, kByKey ? theta : phi, a.dim, n, p0, o0, Own, Oth);
    if (kLogitGrad) tile_product(Dps, kByKey ? g : dy, kByKey ? dy : g, a.channels, n, p0, o0, Own, Oth);
    __syncwarp();
    for (int u = 0; u < kHalfKeys; ++u) {
      const int t = half * kHalfKeys + (u + rot) % kHalfKeys;
      const int64_t own = p0 + row, other = o0 + t;
      const int64_t i = kByKey ? other : own, j = kByKey ? own : other;
      float value = 0.f;  // 0 outside the N x N plane: padded rows must not reach the sums
      if (i < n && j < n) {
        // y: exp(s - m), the row's largest weight exactly 1 (as in the one-pass forward), and
        // 1 / l at the end; the gradients: p itself
        const float shift = kWhich == Slice::kY ? a.row_max[b * n + i] : a.lse[b * n + i];
        const float p = mn::probability(a.scale * Ss[row * kLdS + t], shift);
        value = kLogitGrad ? mn::scaled_logit_grad(p, float(Dps[row * kLdS + t]), a.row_dot[b * n + i], a.scale) : p;
      }
      Ts[row * kLdKey + t] = static_cast<scalar_t>(value);
    }
    __syncthreads();  // X staged by the block, T by the warp
    accumulate_product<kGradWidth>(o_acc, Ts, Xs);
    __syncthreads();  // before the next tile restages X and the products overwrite S, dP
  }
  // y's rows are scaled by 1 / l = exp(m - lse)
  FR_SHARED(float, row_scale, kQueries);
  if (kWhich == Slice::kY && half == 0)
    row_scale[row] = p0 + row < n ? mn::probability(a.row_max[b * n + p0 + row], a.lse[b * n + p0 + row]) : 0.f;
  // written kOutWidth columns at a time through the float buffer
  constexpr int kPerPass = kOutWidth / kWmmaDim;
  for (int pass = 0; pass < kGradWidth / kOutWidth; ++pass) {
    for (int f = 0; f < kPerPass; ++f)
      wmma::store_matrix_sync(Fs + warp * kWmmaDim * kLdO + f * kWmmaDim, o_acc[pass * kPerPass + f], kLdO,
                              wmma::mem_row_major);
    __syncthreads();
    store_tile_output(out, Fs, kWhich == Slice::kY ? row_scale : smem_ptr<float>(nullptr), width, n,
                      w0 + pass * kOutWidth, p0);
    __syncthreads();  // before the next pass overwrites the buffer
  }
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// Up to kOutWidth channels: one pass (online softmax, y and lse). Wider: the lse first, then
// y in slices of kGradWidth channels with the accumulators in registers, which recomputes the
// logits once per 128 channels instead of once per 64.
template <typename scalar_t>
void launch_forward_wmma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  if (a.channels <= kOutWidth) {
    FR_LAUNCH((forward_wmma_kernel<scalar_t, true>), tile_grid(a.batch, a.positions, a.channels, tc::kQueries),
              dim3(kThreads), 0, stream, a);
    return;
  }
  FR_LAUNCH((forward_wmma_kernel<scalar_t, false>), tile_grid(a.batch, a.positions, 0, tc::kQueries),
            dim3(kThreads), 0, stream, a);
  FR_LAUNCH((slice_wmma_kernel<scalar_t, Slice::kY>),
            tile_grid(a.batch, a.positions, a.channels, tc::kQueries, tc::kGradWidth), dim3(kThreads), 0, stream, a);
}

template <typename scalar_t>
void launch_backward_wmma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  launch_row_dot(a, stream);
  if (a.channels > 0)
    FR_LAUNCH((slice_wmma_kernel<scalar_t, Slice::kG>),
              tile_grid(a.batch, a.positions, a.channels, tc::kQueries, tc::kGradWidth), dim3(kThreads), 0, stream, a);
  if (a.dim > 0) {
    const dim3 grid = tile_grid(a.batch, a.positions, a.dim, tc::kQueries, tc::kGradWidth);
    FR_LAUNCH((slice_wmma_kernel<scalar_t, Slice::kPhi>), grid, dim3(kThreads), 0, stream, a);
    FR_LAUNCH((slice_wmma_kernel<scalar_t, Slice::kTheta>), grid, dim3(kThreads), 0, stream, a);
  }
}

template <typename scalar_t>
constexpr bool kHasWmmaPath = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

// The forward and the backward for any input type: wmma for fp16 / bf16 when tensor_cores,
// SIMT otherwise.
template <typename scalar_t>
void launch_forward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, bool tensor_cores, cudaStream_t stream) {
  if constexpr (kHasWmmaPath<scalar_t>) {
    if (tensor_cores) return launch_forward_wmma<scalar_t>(a, stream);
  }
  launch_forward<scalar_t>(a, stream);
}

template <typename scalar_t>
void launch_backward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, bool tensor_cores, cudaStream_t stream) {
  if constexpr (kHasWmmaPath<scalar_t>) {
    if (tensor_cores) return launch_backward_wmma<scalar_t>(a, stream);
  }
  launch_backward<scalar_t>(a, stream);
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
