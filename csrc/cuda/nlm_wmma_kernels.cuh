#pragma once
// Softmax non-local means forward on tensor cores, for fp16 and bf16 inputs (sm_80+): the
// two products of a key tile, S = theta^T phi and O += P g^T, are 16x16x16 warp matrix
// operations with float accumulators; the online softmax between them is SIMT code.
//
// A block has 4 warps and owns kQueries = 64 queries (warp w: rows 16w .. 16w + 15 in every
// step, so the softmax rows and the matrix tiles of a warp are the same) and kOutWidth
// channels of y. Per key tile of kKeys = 32:
//   1. S (64 x 32) accumulates over the width d in chunks of 16, theta and phi staged in
//      shared memory as 16-bit values (zero outside the sample, so any d, N);
//   2. each row's two lanes (16 keys each) update the row's max m and sum l, write
//      P = exp(scale S - m) as 16-bit values and rescale the row's output accumulator by
//      exp(m_old - m); the accumulators live in shared memory (float), since which lane holds
//      which entry of a wmma fragment is unspecified;
//   3. O (64 x kOutWidth) += P (64 x 32) g^T (32 x kOutWidth).
// P is rounded to the input type before the product, as FlashAttention does; l sums the
// float values. The maths per row is kernels/nlm.h's, as in the SIMT kernel.
#include <type_traits>

#include "../common/wmma.cuh"
#include "nlm_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace tc {

constexpr int kQueries = 64;                     // queries per block (16 per warp)
constexpr int kKeys = 32;                        // keys per tile
constexpr int kChunk = kWmmaDim;                 // width of the theta / phi chunks
constexpr int kWarps = kQueries / kWmmaDim;
constexpr int kHalfKeys = kKeys / 2;             // keys per lane in the softmax step
// Leading dimensions of the shared tiles: a multiple of 16 bytes (wmma), padded off a
// multiple of 128 bytes against bank conflicts.
constexpr int kLdTheta = kQueries + 8;           // theta chunk, col-major A: [k][query]
constexpr int kLdKey = kKeys + 8;                // phi chunk [k][key]; P [query][key]; g [channel][key]
constexpr int kLdS = kKeys + 4;                  // float S [query][key]
constexpr int kLdO = kOutWidth + 4;              // float O [query][channel]
static_assert(kThreads == kWarps * kWarpSize, "one warp per 16 query rows");
static_assert(kQueries == kWarps * kWmmaDim && kKeys % kWmmaDim == 0 && kOutWidth % kWmmaDim == 0, "tile shape");
static_assert(kWarpSize == 2 * kWmmaDim, "two lanes per softmax row");

}  // namespace tc

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) forward_wmma_kernel(Ptrs<scalar_t, float> a) {
#if FR_HAS_WMMA
  using namespace tc;
  using E = typename wmma_element<scalar_t>::type;
  using FragS = wmma::fragment<wmma::accumulator, kWmmaDim, kWmmaDim, kWmmaDim, float>;
  __shared__ __align__(32) scalar_t Ths[kChunk * kLdTheta];
  __shared__ __align__(32) scalar_t Phs[kChunk * kLdKey];
  __shared__ __align__(32) scalar_t Ps[kQueries * kLdKey];
  __shared__ __align__(32) scalar_t Gs[kOutWidth * kLdKey];
  __shared__ __align__(32) float Ss[kQueries * kLdS];
  __shared__ __align__(32) float Os[kQueries * kLdO];
  __shared__ float row_inv[kQueries];

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int row = warp * kWmmaDim + lane / 2, half = lane % 2;  // this lane's softmax row and keys
  const int64_t b = blockIdx.z, q0 = int64_t(blockIdx.x) * kQueries, c0 = int64_t(blockIdx.y) * kOutWidth;
  const int64_t n = a.positions;
  const scalar_t* theta = a.theta + b * a.dim * n;
  const scalar_t* phi = a.phi + b * a.dim * n;
  const scalar_t* g = a.g + b * a.channels * n;
  for (int e = threadIdx.x; e < kQueries * kLdO; e += blockDim.x) Os[e] = 0.f;
  float m = mn::neg_inf<float>(), l = 0.f;

  for (int64_t k0 = 0; k0 < n; k0 += kKeys) {
    stage<kKeys>(Gs, kLdKey, g, a.channels, n, c0, kOutWidth, k0);
    FragS s_acc[kKeys / kWmmaDim];
    for (auto& f : s_acc) wmma::fill_fragment(f, 0.f);
    for (int64_t d0 = 0; d0 < a.dim; d0 += kChunk) {
      stage<kQueries>(Ths, kLdTheta, theta, a.dim, n, d0, kChunk, q0);
      stage<kKeys>(Phs, kLdKey, phi, a.dim, n, d0, kChunk, k0);
      __syncthreads();
      wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::col_major> fa;
      wmma::load_matrix_sync(fa, as_wmma(Ths + warp * kWmmaDim), kLdTheta);
      for (int t = 0; t < kKeys / kWmmaDim; ++t) {
        wmma::fragment<wmma::matrix_b, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, as_wmma(Phs + t * kWmmaDim), kLdKey);
        wmma::mma_sync(s_acc[t], fa, fb, s_acc[t]);
      }
      __syncthreads();  // before the next chunk is staged
    }
    for (int t = 0; t < kKeys / kWmmaDim; ++t)
      wmma::store_matrix_sync(Ss + warp * kWmmaDim * kLdS + t * kWmmaDim, s_acc[t], kLdS, wmma::mem_row_major);
    __syncwarp();

    // Online softmax of the row over this tile: the lane's 16 keys, then its partner's.
    float s[kHalfKeys];
    float tile_max = mn::neg_inf<float>();
    for (int u = 0; u < kHalfKeys; ++u) {
      const int j = half * kHalfKeys + u;
      s[u] = k0 + j < n ? a.scale * Ss[row * kLdS + j] : mn::neg_inf<float>();
      tile_max = MaxOp{}(tile_max, s[u]);
    }
    const float m_new = MaxOp{}(m, MaxOp{}(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1)));
    const float alpha = mn::rescale(m, m_new);
    float sum = 0.f;
    for (int u = 0; u < kHalfKeys; ++u) {
      const float p = mn::shifted_weight(s[u], m_new);
      sum += p;
      Ps[row * kLdKey + half * kHalfKeys + u] = static_cast<scalar_t>(p);
    }
    l = l * alpha + sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    m = m_new;
    for (int c = half * (kOutWidth / 2); c < (half + 1) * (kOutWidth / 2); ++c) Os[row * kLdO + c] *= alpha;
    __syncthreads();  // g staged by the block; P and the rescaled O by the warp

    for (int f = 0; f < kOutWidth / kWmmaDim; ++f) {
      float* o_tile = Os + warp * kWmmaDim * kLdO + f * kWmmaDim;
      FragS o_acc;
      wmma::load_matrix_sync(o_acc, o_tile, kLdO, wmma::mem_row_major);
      for (int kk = 0; kk < kKeys / kWmmaDim; ++kk) {
        wmma::fragment<wmma::matrix_a, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::row_major> fp;
        wmma::fragment<wmma::matrix_b, kWmmaDim, kWmmaDim, kWmmaDim, E, wmma::col_major> fg;
        wmma::load_matrix_sync(fp, as_wmma(Ps + warp * kWmmaDim * kLdKey + kk * kWmmaDim), kLdKey);
        wmma::load_matrix_sync(fg, as_wmma(Gs + f * kWmmaDim * kLdKey + kk * kWmmaDim), kLdKey);
        wmma::mma_sync(o_acc, fp, fg, o_acc);
      }
      wmma::store_matrix_sync(o_tile, o_acc, kLdO, wmma::mem_row_major);
    }
    __syncthreads();  // before the next tile restages g, theta, phi and rescales O
  }

  const int64_t i = q0 + row;
  if (half == 0) {
    row_inv[row] = 1.f / l;
    if (blockIdx.y == 0 && i < n) a.lse[b * n + i] = mn::row_lse(m, l);
  }
  __syncthreads();
  scalar_t* out = a.out + b * a.channels * n;
  for (int e = threadIdx.x; e < kOutWidth * kQueries; e += blockDim.x) {
    const int c = e / kQueries, r = e % kQueries;  // consecutive threads: consecutive positions
    if (c0 + c < a.channels && q0 + r < n) out[(c0 + c) * n + q0 + r] = static_cast<scalar_t>(Os[r * kLdO + c] * row_inv[r]);
  }
#endif
}

template <typename scalar_t>
void launch_forward_wmma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  FR_LAUNCH(forward_wmma_kernel<scalar_t>, tile_grid(a.batch, a.positions, a.channels, tc::kQueries),
            dim3(kThreads), 0, stream, a);
}

// The forward for any input type: wmma for fp16 / bf16 when tensor_cores, SIMT otherwise.
template <typename scalar_t>
void launch_forward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, bool tensor_cores, cudaStream_t stream) {
  if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
    if (tensor_cores) return launch_forward_wmma<scalar_t>(a, stream);
  }
  launch_forward<scalar_t>(a, stream);
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
