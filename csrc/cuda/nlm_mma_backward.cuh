#pragma once
// The softmax non-local-means backward on tensor cores, FlashAttention-2's way: no (query, key)
// plane in global memory. Each gradient is a kernel whose block owns 64 positions and a slice of
// the gradient's width, walks the other positions tile by tile, forms the tile's logits again
// (and, for the logit gradients, dp = dy . g), and accumulates its output in registers on
// mma.sync, as the forward does (nlm_mma_forward.cuh: the same tiles, staging and operands):
//   dg_j     = sum_i p_ij dy_i     own = keys,    other = queries, output C wide;
//   dphi_j   = sum_i ds_ij theta_i own = keys,    other = queries, output d wide;
//   dtheta_i = sum_j ds_ij phi_j   own = queries, other = keys,    output d wide;
// with p_ij = exp(scale theta_i . phi_j - lse_i) from the forward's lse and
// ds_ij = scale p_ij (dy_i . g_j - D_i), D_i = dy_i . y_i (row_dot_kernel, before these).
//
// A key-owning block computes the transposed tiles (S^T = phi^T theta, dP^T = g^T dy): its rows
// are keys, so the per-query lse and D are per column, staged in shared memory for each query
// tile; a query-owning block holds its rows' lse and D in registers. p and ds are rounded to the
// input type (tf32 for fp32) as the A operand of the output product, as the planes that held
// them were.
//
// Work: every block forms the logits of its tile pairs (d deep) and, for dphi and dtheta, dp (C
// deep), once per output slice: this kernel's blocks are up to 256 columns wide (128 for fp32,
// whose 256-column tiles would not fit 48 KiB of shared memory next to the staged lse and D);
// wider outputs take backward_wide_kernel (nlm_mma_backward_wide.cuh: blocks of 512, slices of
// 1024, and for tf32 blocks of 256). With one kernel per gradient that is 1.68x the backward's
// minimal FLOPs at the benchmark shape C = 1024, d = 512 (with the padding of 784 positions to
// 800), where the planes (p and ds written once, read by every output slice) moved 4-39x its
// minimal bytes. With C <= 512 and d <= 256 dg and dphi come from one kernel instead
// (fused_key_gradients_kernel), which forms each entry's logit and dp once for both: 1.43x at
// C = 256, d = 128 and at C = 512, d = 256.
#include "nlm_mma_forward.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace tc {
// Output columns per block of backward_mma_kernel at most: fp32's tiles take twice the bytes.
template <typename scalar_t>
constexpr int kBackwardSlice = std::is_same_v<scalar_t, float> ? 128 : kSliceWidth;
}  // namespace tc

// A key-owning block's per-column factors of the other tile (the kCount queries from q0): their
// lse and, with_dot, D (else 0); 0 past the n positions. Read after the next barrier (the last
// tile's readers are past theirs).
template <int kCount, typename scalar_t>
__device__ __forceinline__ void stage_query_stats(smem_ptr<float> col_lse, smem_ptr<float> col_dot,
                                                  FR_GLOBAL(const float) lse, const Ptrs<scalar_t, float>& a,
                                                  int64_t b, int64_t q0, bool with_dot) {
  if (threadIdx.x < kCount) {
    const int64_t i = q0 + threadIdx.x;
    const bool inside = i < a.positions;
    col_lse[threadIdx.x] = inside ? float(lse[i]) : 0.f;
    col_dot[threadIdx.x] = with_dot && inside ? row_dot_of(a, b, i) : 0.f;
  }
}

// A query-owning block's rows i0 and i0 + 8 (a lane's g and g + 8): their lse and D; 0 past the
// n positions.
template <typename scalar_t>
__device__ __forceinline__ void query_row_stats(float (&row_lse)[2], float (&row_dot)[2], FR_GLOBAL(const float) lse,
                                                const Ptrs<scalar_t, float>& a, int64_t b, int64_t i0) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = i0 + 8 * h;
    row_lse[h] = i < a.positions ? float(lse[i]) : 0.f;
    row_dot[h] = i < a.positions ? row_dot_of(a, b, i) : 0.f;
  }
}

// What a block of gradient kWhich for sample b reads and writes: the logits' factors on its own
// axis and on the other (theta and phi, one way round), dp's (dy and g), the output's factor Z
// ([column][other]) and the output, from column blockIdx.y * kWidth (at most kWidth of them,
// in out_tiles 8-column tiles); the logits' reduction in logit_chunks chunks.
template <typename scalar_t>
struct GradientSlice {
  FR_GLOBAL(const scalar_t) own_logit;
  FR_GLOBAL(const scalar_t) other_logit;
  FR_GLOBAL(const scalar_t) own_dp;
  FR_GLOBAL(const scalar_t) other_dp;
  FR_GLOBAL(const scalar_t) z;
  FR_GLOBAL(scalar_t) out;
  FR_GLOBAL(const float) lse;
  int64_t columns, logit_chunks;
  int out_tiles;  // the same for every thread
};

template <Grad kWhich, int kWidth, typename scalar_t>
__device__ __forceinline__ GradientSlice<scalar_t> gradient_slice(const Ptrs<scalar_t, float>& a, int64_t b) {
  constexpr bool kByQuery = kWhich == Grad::kTheta;
  const int64_t n = a.positions, d = a.dim, c = a.channels;
  FR_GLOBAL(const scalar_t) theta = a.theta + b * d * n;
  FR_GLOBAL(const scalar_t) phi = a.phi + b * d * n;
  FR_GLOBAL(const scalar_t) values = a.g + b * c * n;
  FR_GLOBAL(const scalar_t) grad_y = a.grad_y + b * c * n;
  const int64_t width = kWhich == Grad::kG ? c : d;
  const int64_t c_first = int64_t(blockIdx.y) * kWidth;
  const int64_t columns = std::min<int64_t>(kWidth, width - c_first);
  return {kByQuery ? theta : phi,
          kByQuery ? phi : theta,
          kByQuery ? grad_y : values,
          kByQuery ? values : grad_y,
          (kWhich == Grad::kG ? grad_y : (kWhich == Grad::kPhi ? theta : phi)) + c_first * n,
          (kWhich == Grad::kG ? a.grad_g : (kWhich == Grad::kPhi ? a.grad_phi : a.grad_theta)) +
              (b * width + c_first) * n,
          a.lse + b * n,
          columns,
          ceil_div<int64_t>(d, tc::kChunk),
          static_cast<int>(ceil_div<int64_t>(columns, tc::kColTile))};
}

// One block: the kQueries positions blockIdx.x * kQueries.. of the own axis, kWidth columns
// (blockIdx.y's slice) of the gradient kWhich, sample blockIdx.z.
template <typename scalar_t, Grad kWhich, int kWidth>
__global__ void __launch_bounds__(kThreads) backward_mma_kernel(Ptrs<scalar_t, float> a, bool async) {
#if FR_HAS_WMMA
  using namespace tc;
  static_assert(kWhich != Grad::kY, "y comes from the forward");
  constexpr bool kByQuery = kWhich == Grad::kTheta, kWithDp = kWhich != Grad::kG;
  constexpr int kTileKeys = OnePass<scalar_t>::kKeys, kPitchKey = OnePass<scalar_t>::kLdKey;
  constexpr int kDepth = OnePass<scalar_t>::kDepth;
  constexpr int kKeyTiles = kTileKeys / kColTile, kOutTiles = kWidth / kColTile;
  constexpr int kOwnTile = kChunk * kLdTheta, kOtherTile = kChunk * kPitchKey;
  constexpr int kPart = y_part(kWidth, kWidth * kPitchKey);  // output columns written per round
  static_assert(kPart % kColTile == 0, "whole column tiles per round");
  FR_SHARED_ALIGNED(16, scalar_t, Owns, 2 * kOwnTile);        // [k][own], two chunks
  FR_SHARED_ALIGNED(16, scalar_t, Others, 2 * kOtherTile);    // [k][other], two chunks
  FR_SHARED_ALIGNED(16, scalar_t, Zs, kWidth * kPitchKey);    // [column][other]; at the end out [column][own]
  FR_SHARED(float, col_lse, kByQuery ? 1 : kTileKeys);        // the other tile's lse and D (own = keys)
  FR_SHARED(float, col_dot, kByQuery ? 1 : kTileKeys);

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int g = lane / 4, t = lane % 4, row0 = warp * kWmmaDim;
  const int64_t b = blockIdx.z, own0 = int64_t(blockIdx.x) * kQueries, n = a.positions;
  const int64_t d = a.dim, c = a.channels;
  const GradientSlice<scalar_t> in = gradient_slice<kWhich, kWidth>(a, b);
  const auto own_logit = in.own_logit, other_logit = in.other_logit, own_dp = in.own_dp, other_dp = in.other_dp;
  const auto z = in.z;
  const auto out = in.out;
  const auto lse = in.lse;
  const int64_t columns = in.columns;
  const int out_tiles = in.out_tiles;

  // Chunks of the reduction: the logits' d rows, then (kWithDp) dp's C rows.
  const int64_t logit_chunks = in.logit_chunks;
  const int64_t chunks = logit_chunks + (kWithDp ? ceil_div<int64_t>(c, kChunk) : 0);
  const auto copy_chunk = [&](int64_t o0, int64_t k, int buf) {
    const bool logit = k < logit_chunks;
    const int64_t rows = logit ? d : c, r0 = (logit ? k : k - logit_chunks) * kChunk;
    stage_tile<kQueries>(async, Owns + buf * kOwnTile, kLdTheta, logit ? own_logit : own_dp, rows, n, r0, kChunk,
                         own0);
    stage_tile<kTileKeys>(async, Others + buf * kOtherTile, kPitchKey, logit ? other_logit : other_dp, rows, n, r0,
                          kChunk, o0);
    cp_async_commit();
  };

  // a query-owning block's rows g and g + 8: their lse and D
  float row_lse[2] = {0.f, 0.f}, row_dot[2] = {0.f, 0.f};
  if constexpr (kByQuery) query_row_stats(row_lse, row_dot, lse, a, b, own0 + row0 + g);

  float o[kOutTiles][4] = {};
  int buf = 0;
  if (chunks > 0) copy_chunk(0, 0, 0);
  for (int64_t o0 = 0; o0 < n; o0 += kTileKeys) {
    stage_tile<kTileKeys>(async, Zs, kPitchKey, z, columns, n, 0, out_tiles * kColTile, o0);
    cp_async_commit();
    if constexpr (!kByQuery) stage_query_stats<kTileKeys>(col_lse, col_dot, lse, a, b, o0, kWithDp);
    float s[kKeyTiles][4] = {}, dp[kKeyTiles][4] = {};
    reduce_chunks(chunks, o0, o0 + kTileKeys, o0 + kTileKeys < n, buf, copy_chunk, [&](int64_t k, int at) {
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += kDepth) {
        if (k < logit_chunks)
          accumulate_logits<kKeyTiles>(s, Owns + at * kOwnTile, kLdTheta, row0, Others + at * kOtherTile, kPitchKey,
                                       kk);
        else
          accumulate_logits<kKeyTiles>(dp, Owns + at * kOwnTile, kLdTheta, row0, Others + at * kOtherTile, kPitchKey,
                                       kk);
      }
    });

    // p (or ds) of each entry, in place of its logit: rows g + 8h, columns o0 + 8j + 2t + e
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int h = i / 2, col = j * kColTile + 2 * t + i % 2;
        const float x = o0 + col < n ? a.scale * s[j][i] : mn::neg_inf<float>();
        const float p = mn::probability(x, kByQuery ? row_lse[h] : float(col_lse[col]));
        if constexpr (kWithDp) {
          const float dot = kByQuery ? row_dot[h] : float(col_dot[col]);
          s[j][i] = mn::scaled_logit_grad(p, dp[j][i], dot, a.scale);
        } else {
          s[j][i] = p;
        }
      }

    accumulate_output<scalar_t>(o, s, Zs, kPitchKey, out_tiles);  // O += W Z^T
    __syncthreads();  // before the next tile restages Z, lse, D and the chunks
  }

  const float unscaled[2] = {1.f, 1.f};
  store_output<kWidth, kPart>(o, unscaled, Zs, out, columns, n, own0);
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

namespace tc {
// The key-owning gradients dg and dphi in one kernel (fp16 / bf16, and fp32 as tf32), where
// C <= kMaxG and d <= kMaxPhi of one of two shapes (Fused<kKeys>): a block owns kKeys keys with
// 8 warps and walks the queries in tiles of kFusedQueries. Per query tile:
//   1. the tile's theta ([k][query], d rows) and dy (C rows) are staged whole (Z, pitch
//      kLdQuery): they are the B operand of S^T = phi^T theta and dP^T = g^T dy and, after, the
//      B operand of dphi += dS^T theta^T and dg += P^T dy^T; phi and g (the own operand, d then
//      C rows) stream through the double-buffered chunks;
//   2. warp w forms S^T and dP^T of the 16 keys of key tile w % kKeyTiles and of one share of
//      the queries (w / kKeyTiles), so each entry is formed once, turns them into P^T and dS^T
//      and writes both to shared memory (X, kKeys x 32 queries each);
//   3. after a barrier, warp w multiplies its 16 keys' rows of P^T and dS^T (all 32 queries,
//      from X) into its share (w / kKeyTiles) of the output columns.
// The two shapes keep 96 accumulators a lane: 64 keys with C <= 256, d <= 128 (4 key tiles,
// column halves; 48,384 bytes of shared memory, tf32 100,352) and 32 keys with C <= 512,
// d <= 256 (2 key tiles, column quarters; 70,912 bytes, tf32 143,360), the tiles dynamic and
// opted into over 48 KiB (FR_OPT_IN_DYNAMIC_SMEM).
// Each entry's logit and dp are thus formed once for both outputs where the separate kernels
// formed them twice (S) and once more (dP): the backward's FLOPs at d = C / 2 fall from 11 to 10
// units of 2 N^2 d (its minimum: 7; dtheta's query-owning kernel still forms S and dP again).
// 16-bit X holds 32-bit pairs of queries, 16 words a key, XOR-swizzled (word ^ 4 ((key / 2) % 4)):
// a warp's write or A-operand read touches words t (+ a multiple of 4) of rows g, which without
// the swizzle would share banks 4 ways (16 words a row); with it they fall in 32 different banks.
// tf32's X holds floats with pitch kLdQuery (40, 8 banks apart a row): its 8-byte pairs (rows g,
// words 2t) take one wavefront per half-warp, as the wide kernels' W.
constexpr int kFusedWarps = 8;
constexpr int kFusedThreads = kFusedWarps * kWarpSize;
constexpr int kFusedQueries = 32;
constexpr int kLdQuery = kFusedQueries + 8;  // 20 words a row: the B operand's bank analysis above
constexpr int kXWords = kFusedQueries / 2;   // 32-bit words of a key's row of X
template <int kKeys>
struct Fused {
  static constexpr int kKeyTiles = kKeys / kWmmaDim;
  static constexpr int kShares = kFusedWarps / kKeyTiles;  // warps per key tile: queries, then columns
  static constexpr int kMaxG = kKeys == 64 ? 256 : 512, kMaxPhi = kMaxG / 2;
  static constexpr int kShareQueries = kFusedQueries / kShares, kSTiles = kShareQueries / kColTile;
  static constexpr int kGTiles = kMaxG / kShares / kColTile, kPhiTiles = kMaxPhi / kShares / kColTile;
  static constexpr int kLdOwn = kKeys + 8;  // the own chunk [k][key]: theta's pitch in the forward
  static constexpr int kOwnTile = kChunk * kLdOwn, kZTile = (kMaxPhi + kMaxG) * kLdQuery;
  // X (P^T or dS^T, [key][query]) of scalar_t: 16-bit pairs swizzled, tf32's floats padded
  template <typename scalar_t>
  static constexpr int kXTile = kKeys * (std::is_same_v<scalar_t, float> ? kLdQuery : kFusedQueries);
  template <typename scalar_t>  // the dynamic tiles
  static constexpr int kElements = 2 * kOwnTile + kZTile + 2 * kXTile<scalar_t>;
  static constexpr int kPart = y_part(kMaxG, kZTile, kLdOwn);  // output columns written per round
  static_assert(kKeyTiles * kShares == kFusedWarps && kSTiles >= 1, "the warps cover the tile once");
  static_assert(kPart % kColTile == 0 && kOwnTile % 8 == 0 && kZTile % 8 == 0, "tile shape");
};

__device__ __forceinline__ int x_word(int key, int word) { return key * kXWords + (word ^ (4 * ((key >> 1) & 3))); }

// The element of X holding (key, query), query even (the first of a pair).
template <typename scalar_t>
__device__ __forceinline__ int x_at(int key, int query) {
  if constexpr (std::is_same_v<scalar_t, float>)
    return key * kLdQuery + query;
  else
    return 2 * x_word(key, query / 2);
}
}  // namespace tc

#if FR_HAS_WMMA
// The A operand of step u of X's product for X's 16 keys from row0: 16-bit pairs from the
// swizzled words; tf32 as the wide kernels' W (w_operand's order, which g_operand's matches).
template <typename scalar_t>
__device__ __forceinline__ void x_operand(uint32_t (&a)[4], smem_ptr<scalar_t> X, int row0, int u) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    w_operand<scalar_t>(a, X, tc::kLdQuery, row0, u);  // x_at<float>: pitch kLdQuery
  } else {
    const int lane = static_cast<int>(threadIdx.x) % kWarpSize, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int r = 0; r < 4; ++r)  // keys g (r even) and g + 8, queries 16u + 2t (r < 2) and + 8
      a[r] = shared_pair(X, tc::x_at<scalar_t>(row0 + g + 8 * (r % 2), u * 16 + 2 * t + 8 * (r / 2)));
  }
}
#endif

// The keys per block of fused_key_gradients_kernel for (d, C), or 0 where the backward takes
// separate kernels for dg and dphi.
template <typename scalar_t>
int fused_key_tile(int64_t dim, int64_t channels) {
  if (dim <= 0 || channels <= 0) return 0;
  if (dim <= tc::Fused<64>::kMaxPhi && channels <= tc::Fused<64>::kMaxG) return 64;
  return dim <= tc::Fused<32>::kMaxPhi && channels <= tc::Fused<32>::kMaxG ? 32 : 0;
}

// dg and dphi of the kKeys keys blockIdx.x * kKeys .. of sample blockIdx.z (tc above).
template <typename scalar_t, int kKeys>
__global__ void __launch_bounds__(tc::kFusedThreads)
    fused_key_gradients_kernel(Ptrs<scalar_t, float> a, bool async) {
#if FR_HAS_WMMA
  using namespace tc;
  using F = Fused<kKeys>;
  static_assert(kMmaInput<scalar_t> || std::is_same_v<scalar_t, float>, "m16n8k16 or tf32's m16n8k8");
  constexpr int kDepth = OnePass<scalar_t>::kDepth, kSTiles = F::kSTiles;
  constexpr int kGTiles = F::kGTiles, kPhiTiles = F::kPhiTiles;  // a warp's
  constexpr int kOwnTile = F::kOwnTile, kLdOwn = F::kLdOwn;
  static_assert(kFusedQueries % kDepth == 0, "tile shape");
  FR_DYNAMIC_SMEM(scalar_t, tiles);
  const smem_ptr<scalar_t> Owns = tiles;                // phi, then g: [k][key], two chunks
  const smem_ptr<scalar_t> Zs = Owns + 2 * kOwnTile;    // theta, then dy: [k][query]
  const smem_ptr<scalar_t> Xp = Zs + F::kZTile;         // P^T [key][query] (x_at)
  const smem_ptr<scalar_t> Xds = Xp + F::template kXTile<scalar_t>;  // dS^T
  FR_SHARED(float, col_lse, kFusedQueries);
  FR_SHARED(float, col_dot, kFusedQueries);

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int g = lane / 4, t = lane % 4, row0 = (warp % F::kKeyTiles) * kWmmaDim, share = warp / F::kKeyTiles;
  const int64_t b = blockIdx.z, own0 = int64_t(blockIdx.x) * kKeys, n = a.positions;
  const int64_t d = a.dim, c = a.channels, d_rows = ceil_div<int64_t>(d, kChunk) * kChunk;
  const int64_t c_rows = ceil_div<int64_t>(c, kChunk) * kChunk;
  FR_GLOBAL(const scalar_t) theta = a.theta + b * d * n;
  FR_GLOBAL(const scalar_t) phi = a.phi + b * d * n;
  FR_GLOBAL(const scalar_t) values = a.g + b * c * n;
  FR_GLOBAL(const scalar_t) grad_y = a.grad_y + b * c * n;
  FR_GLOBAL(const float) lse = a.lse + b * n;
  const smem_ptr<scalar_t> Zth = Zs, Zdy = Zs + F::kMaxPhi * kLdQuery;
  const int g_tiles = static_cast<int>(ceil_div<int64_t>(c, kColTile));  // 8-column tiles holding columns
  const int phi_tiles = static_cast<int>(ceil_div<int64_t>(d, kColTile));

  // The own operand's chunks: phi's d rows, then g's C rows.
  const int64_t logit_chunks = d_rows / kChunk, chunks = logit_chunks + c_rows / kChunk;
  const auto copy_chunk = [&](int64_t, int64_t k, int buf) {
    const bool logit = k < logit_chunks;
    stage_tile<kKeys>(async, Owns + buf * kOwnTile, kLdOwn, logit ? phi : values, logit ? d : c, n,
                         (logit ? k : k - logit_chunks) * kChunk, kChunk, own0);
    cp_async_commit();
  };

  float og[kGTiles][4] = {}, ophi[kPhiTiles][4] = {};
  int buf = 0;
  copy_chunk(0, 0, 0);
  for (int64_t q0 = 0; q0 < n; q0 += kFusedQueries) {
    stage_tile<kFusedQueries>(async, Zth, kLdQuery, theta, d, n, 0, static_cast<int>(d_rows), q0);
    stage_tile<kFusedQueries>(async, Zdy, kLdQuery, grad_y, c, n, 0, static_cast<int>(c_rows), q0);
    cp_async_commit();
    stage_query_stats<kFusedQueries>(col_lse, col_dot, lse, a, b, q0, true);
    // S^T and dP^T of this warp's keys and share of the queries
    float s[kSTiles][4] = {}, dp[kSTiles][4] = {};
    reduce_chunks(chunks, q0, q0 + kFusedQueries, q0 + kFusedQueries < n, buf, copy_chunk, [&](int64_t k, int at) {
      const bool logit = k < logit_chunks;
      const int row = static_cast<int>(logit ? k : k - logit_chunks) * kChunk;
      const smem_ptr<scalar_t> others = (logit ? Zth : Zdy) + row * kLdQuery + share * F::kShareQueries;
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += kDepth) {
        if (logit)
          accumulate_logits<kSTiles>(s, Owns + at * kOwnTile, kLdOwn, row0, others, kLdQuery, kk);
        else
          accumulate_logits<kSTiles>(dp, Owns + at * kOwnTile, kLdOwn, row0, others, kLdQuery, kk);
      }
    });

    // P^T and dS^T of each entry into X: keys row0 + g + 8h, queries kShareQueries share + 8j + 2t + e
#pragma unroll
    for (int j = 0; j < kSTiles; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float p[2], ds[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = share * F::kShareQueries + j * kColTile + 2 * t + e;
          const float x = q0 + col < n ? a.scale * s[j][2 * h + e] : mn::neg_inf<float>();
          p[e] = mn::probability(x, float(col_lse[col]));
          ds[e] = mn::scaled_logit_grad(p[e], dp[j][2 * h + e], float(col_dot[col]), a.scale);
        }
        const int at = x_at<scalar_t>(row0 + g + 8 * h, share * F::kShareQueries + j * kColTile + 2 * t);
        store_entry_pair(Xp, at, p[0], p[1]);
        store_entry_pair(Xds, at, ds[0], ds[1]);
      }
    __syncthreads();

    // dg += P^T dy^T and dphi += dS^T theta^T over the tile's queries, kDepth a step
#pragma unroll
    for (int u = 0; u < kFusedQueries / kDepth; ++u) {
      uint32_t ap[4], ads[4];
      x_operand<scalar_t>(ap, Xp, row0, u);
      x_operand<scalar_t>(ads, Xds, row0, u);
#pragma unroll
      for (int f = 0; f < kGTiles; ++f) {
        if (share * kGTiles + f >= g_tiles) break;  // the same for the whole warp
        uint32_t bv[2];
        g_operand<scalar_t>(bv, Zdy + share * kGTiles * kColTile * kLdQuery, kLdQuery, f, u);
        mma<scalar_t>(og[f], ap, bv);
      }
#pragma unroll
      for (int f = 0; f < kPhiTiles; ++f) {
        if (share * kPhiTiles + f >= phi_tiles) break;
        uint32_t bv[2];
        g_operand<scalar_t>(bv, Zth + share * kPhiTiles * kColTile * kLdQuery, kLdQuery, f, u);
        mma<scalar_t>(ophi[f], ads, bv);
      }
    }
    __syncthreads();  // before the next tile restages Z, X, the lse and D
  }

  FR_GLOBAL(scalar_t) grad_g = a.grad_g + b * c * n;
  FR_GLOBAL(scalar_t) grad_phi = a.grad_phi + b * d * n;
  store_block<1, kGTiles, kKeys, F::kPart>([&](int, int f, int e) { return og[f][e]; }, Zs, grad_g, c, n, own0, row0,
                                           share * kGTiles * kColTile);
  store_block<1, kPhiTiles, kKeys, F::kPart>([&](int, int f, int e) { return ophi[f][e]; }, Zs, grad_phi, d, n, own0,
                                             row0, share * kPhiTiles * kColTile);
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
