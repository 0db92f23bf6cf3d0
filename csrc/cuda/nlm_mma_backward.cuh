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
// deep), once per output slice: 256 columns a slice (128 for fp32, whose 256-column tiles would
// not fit 48 KiB of shared memory next to the staged lse and D). At the benchmark shapes (d =
// C / 2) that is 1.5x (C <= 256) to 2.9x (C = 1024) the backward's minimal FLOPs, where the
// planes (p and ds written once, read by every output slice) moved 4-39x its minimal bytes.
#include "nlm_mma_forward.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace tc {
// Output columns per block of the backward at most: fp32's tiles take twice the bytes.
template <typename scalar_t>
constexpr int kBackwardSlice = std::is_same_v<scalar_t, float> ? 128 : kSliceWidth;
}  // namespace tc

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
  FR_GLOBAL(const scalar_t) theta = a.theta + b * d * n;
  FR_GLOBAL(const scalar_t) phi = a.phi + b * d * n;
  FR_GLOBAL(const scalar_t) values = a.g + b * c * n;
  FR_GLOBAL(const scalar_t) grad_y = a.grad_y + b * c * n;
  FR_GLOBAL(const float) lse = a.lse + b * n;
  // the logits' and dp's factors on the own axis and on the other
  FR_GLOBAL(const scalar_t) own_logit = kByQuery ? theta : phi;
  FR_GLOBAL(const scalar_t) other_logit = kByQuery ? phi : theta;
  FR_GLOBAL(const scalar_t) own_dp = kByQuery ? grad_y : values;
  FR_GLOBAL(const scalar_t) other_dp = kByQuery ? values : grad_y;
  // the output's factor Z ([column][other]) and the output
  const int64_t width = kWhich == Grad::kG ? c : d;
  const int64_t c_first = int64_t(blockIdx.y) * kWidth;
  const int64_t columns = std::min<int64_t>(kWidth, width - c_first);  // this block's
  FR_GLOBAL(const scalar_t) z = (kWhich == Grad::kG ? grad_y : (kWhich == Grad::kPhi ? theta : phi)) + c_first * n;
  FR_GLOBAL(scalar_t) out =
      (kWhich == Grad::kG ? a.grad_g : (kWhich == Grad::kPhi ? a.grad_phi : a.grad_theta)) + (b * width + c_first) * n;
  const int out_tiles = static_cast<int>(ceil_div<int64_t>(columns, kColTile));  // the same for every thread

  // Chunks of the reduction: the logits' d rows, then (kWithDp) dp's C rows.
  const int64_t logit_chunks = ceil_div<int64_t>(d, kChunk);
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
  if constexpr (kByQuery) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = own0 + row0 + g + 8 * h;
      if (i < n) {
        row_lse[h] = lse[i];
        row_dot[h] = row_dot_of(a, b, i);
      }
    }
  }

  float o[kOutTiles][4] = {};
  int buf = 0;
  if (chunks > 0) copy_chunk(0, 0, 0);
  for (int64_t o0 = 0; o0 < n; o0 += kTileKeys) {
    stage_tile<kTileKeys>(async, Zs, kPitchKey, z, columns, n, 0, out_tiles * kColTile, o0);
    cp_async_commit();
    if constexpr (!kByQuery) {
      if (threadIdx.x < kTileKeys) {  // (read after the barrier below; the last tile's readers are past theirs)
        const int64_t j = o0 + threadIdx.x;
        col_lse[threadIdx.x] = j < n ? float(lse[j]) : 0.f;
        col_dot[threadIdx.x] = kWithDp && j < n ? row_dot_of(a, b, j) : 0.f;
      }
    }
    float s[kKeyTiles][4] = {}, dp[kKeyTiles][4] = {};
    for (int64_t k = 0; k < chunks; ++k) {
      // the next chunk, of this tile or the first of the next, goes to the other buffer
      if (k + 1 < chunks)
        copy_chunk(o0, k + 1, buf ^ 1);
      else if (o0 + kTileKeys < n)
        copy_chunk(o0 + kTileKeys, 0, buf ^ 1);
      else
        cp_async_commit();  // an empty group: the wait below leaves the newest group pending
      cp_async_wait<1>();  // this chunk's copies (and Z's) have landed
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += kDepth) {
        if (k < logit_chunks)
          accumulate_logits<kKeyTiles>(s, Owns + buf * kOwnTile, kLdTheta, row0, Others + buf * kOtherTile, kPitchKey,
                                       kk);
        else
          accumulate_logits<kKeyTiles>(dp, Owns + buf * kOwnTile, kLdTheta, row0, Others + buf * kOtherTile, kPitchKey,
                                       kk);
      }
      __syncthreads();  // before the buffer is copied into again
      buf ^= 1;
    }
    if (chunks == 0) {  // d = 0 (and no dp): no chunk waited for Z, lse and D
      cp_async_wait<0>();
      __syncthreads();
    }

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

    // O += W Z^T, W's accumulators as the A operand (p_operand), kDepth positions a step.
#pragma unroll
    for (int u = 0; u < kTileKeys / kDepth; ++u) {
      uint32_t w[4];
      p_operand<scalar_t>(w, s, u);
#pragma unroll
      for (int f = 0; f < kOutTiles; ++f) {
        if (f >= out_tiles) break;  // the same for the whole block
        uint32_t zb[2];
        g_operand<scalar_t>(zb, Zs, kPitchKey, f, u);
        mma<scalar_t>(o[f], w, zb);
      }
    }
    __syncthreads();  // before the next tile restages Z, lse, D and the chunks
  }

  cp_async_wait<0>();  // (only empty groups are left)
  for (int c0 = 0; c0 < out_tiles * kColTile; c0 += kPart) {
#pragma unroll
    for (int f = 0; f < kOutTiles; ++f) {
      if (f * kColTile < c0 || f * kColTile >= c0 + kPart || f >= out_tiles) continue;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int col = f * kColTile + 2 * t + i % 2 - c0, r = row0 + g + 8 * (i / 2);
        Zs[col * kLdTheta + r] = static_cast<scalar_t>(o[f][i]);
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kPart * kQueries; e += blockDim.x) {
      const int col = e / kQueries, r = e % kQueries;
      if (c0 + col < columns && own0 + r < n) out[(c0 + col) * n + own0 + r] = static_cast<scalar_t>(Zs[col * kLdTheta + r]);
    }
    __syncthreads();  // before the next round overwrites the tile
  }
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// One gradient's launch: blocks of the narrowest of 64, 128 and kBackwardSlice columns that holds
// its width, or slices of kBackwardSlice.
template <typename scalar_t, Grad kWhich>
void launch_backward_gradient(const Ptrs<scalar_t, float>& a, int64_t width, bool async, cudaStream_t stream) {
  constexpr int kSlice = tc::kBackwardSlice<scalar_t>;
  const dim3 block(kThreads);
  // (FR_LAUNCH names the kernel as written, for the emulator's launch log: one call each)
  if (width <= 64) {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, 64>), tile_grid(a.batch, a.positions, width, tc::kQueries, 64),
              block, 0, stream, a, async);
  } else if (width <= 128 || kSlice == 128) {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, 128>), tile_grid(a.batch, a.positions, width, tc::kQueries, 128),
              block, 0, stream, a, async);
  } else {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, kSlice>),
              tile_grid(a.batch, a.positions, width, tc::kQueries, kSlice), block, 0, stream, a, async);
  }
}

// D first, then dg, dphi and dtheta.
template <typename scalar_t>
void launch_backward_mma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  launch_row_dot(a, stream);
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool async = a.positions % (16 / sizeof(scalar_t)) == 0 && aligned(a.theta) && aligned(a.phi) &&
                     aligned(a.g) && aligned(a.grad_y);
  if (a.channels > 0) launch_backward_gradient<scalar_t, Grad::kG>(a, a.channels, async, stream);
  if (a.dim > 0) {
    launch_backward_gradient<scalar_t, Grad::kPhi>(a, a.dim, async, stream);
    launch_backward_gradient<scalar_t, Grad::kTheta>(a, a.dim, async, stream);
  }
}

// The backward for any input type: tensor cores where use_tensor_cores (no planes), SIMT over
// the planes otherwise.
template <typename scalar_t>
void launch_backward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, const TensorCores& tensor_cores,
                     const PlaneBuffers& buffers, cudaStream_t stream) {
  if constexpr (kHasWmmaPath<scalar_t>) {
    if (use_tensor_cores<scalar_t>(tensor_cores)) return launch_backward_mma<scalar_t>(a, stream);
  }
  launch_backward<scalar_t>(a, buffers, stream);
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
