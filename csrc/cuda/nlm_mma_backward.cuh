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
// C / 2) that is 1.57x (C = 256), 1.71x (512) and 3.09x (1024, with the padding of 784
// positions to 832) the backward's minimal FLOPs in bf16 (fp32 as tf32: 1.71x to 5.46x), where
// the planes (p and ds written once, read by every output slice) moved 4-39x its minimal bytes.
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
  store_output<kWidth, kPart>(o, unscaled, Zs, out, columns, out_tiles, n, own0);
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
  } else if constexpr (kSlice > 128) {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, kSlice>),
              tile_grid(a.batch, a.positions, width, tc::kQueries, kSlice), block, 0, stream, a, async);
  }
}

// D first, then dg, dphi and dtheta.
template <typename scalar_t>
void launch_backward_mma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  launch_row_dot(a, stream);
  const bool async = async_staging<scalar_t>(a.positions, a.theta, a.phi, a.g, a.grad_y);
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
  if constexpr (kHasTensorCorePath<scalar_t>) {
    if (use_tensor_cores<scalar_t>(tensor_cores)) return launch_backward_mma<scalar_t>(a, stream);
  }
  launch_backward<scalar_t>(a, buffers, stream);
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
