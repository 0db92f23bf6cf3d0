#pragma once
// The tensor-core backward's gradients wider than 256 columns (fp16 / bf16, and fp32 as tf32): dg
// where C > 256, dphi and dtheta where d > 256 (and, 16-bit, C or d is over the fused kernel's
// widths). backward_mma_kernel (nlm_mma_backward.cuh) holds a warp's 16 rows of all its columns
// in registers, so above 256 columns (tf32: 128) it runs slices, each forming the logits (and dp)
// of its tiles again: 2x and 4x them at 512 and 1024 columns (tf32: 4x and 8x).
// backward_wide_kernel is forward_wide_kernel's block (nlm_mma_forward_wide.cuh: 8 warps,
// Wide<kWidth>'s tiles) for a gradient: warp w forms the logits (and dp) of one 16-row tile of
// the own positions and one share of the other axis's tile, turns them into p (dg) or ds (dphi,
// dtheta) and writes them to shared memory (Ws); after a barrier every warp multiplies all kRows
// rows of W into its eighth of the columns (O += W Z^T, accumulate_wide). Each entry is formed
// once per slice of up to 1024 columns.
// The per-entry factors are as backward_mma_kernel's: a query-owning block (dtheta) holds its
// rows' lse and D in registers, a key-owning block (dg, dphi) stages the query tile's in shared
// memory.
#include "nlm_mma_backward.cuh"
#include "nlm_mma_forward_wide.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

// One block: Wide<kWidth>::kRows positions blockIdx.x * kRows.. of the own axis, up to kWidth
// columns (blockIdx.y's slice) of the gradient kWhich, sample blockIdx.z.
template <typename scalar_t, Grad kWhich, int kWidth>
__global__ void __launch_bounds__(tc::Wide<kWidth>::kThreads) backward_wide_kernel(Ptrs<scalar_t, float> a,
                                                                                   bool async) {
#if FR_HAS_WMMA
  using namespace tc;
  using W = Wide<kWidth>;
  static_assert(kMmaInput<scalar_t> || std::is_same_v<scalar_t, float>, "m16n8k16 or tf32's m16n8k8");
  static_assert(kWhich != Grad::kY, "y comes from the forward");
  constexpr bool kByQuery = kWhich == Grad::kTheta, kWithDp = kWhich != Grad::kG;
  constexpr int kDepth = OnePass<scalar_t>::kDepth, kRows = W::kRows, kLdKey = W::kLdKey, kKeys = W::kKeys;
  FR_DYNAMIC_SMEM(scalar_t, tiles);
  const smem_ptr<scalar_t> Owns = tiles;                        // [k][own], two chunks
  const smem_ptr<scalar_t> Others = Owns + 2 * W::kThetaTile;  // [k][other], two chunks
  const smem_ptr<scalar_t> Zs = Others + 2 * W::kPhiTile;      // [column][other]; at the end out [column][own]
  const smem_ptr<scalar_t> Ws = Zs + W::kGTile;                // p or ds [own][other]
  FR_SHARED(float, col_lse, kByQuery ? 1 : kKeys);             // the other tile's lse and D (own = keys)
  FR_SHARED(float, col_dot, kByQuery ? 1 : kKeys);

  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int s_row0 = (warp % W::kRowTiles) * kWmmaDim, group = warp / W::kRowTiles;  // the warp's entries
  const int64_t b = blockIdx.z, own0 = int64_t(blockIdx.x) * kRows, n = a.positions;
  const int64_t d = a.dim, c = a.channels;
  const GradientSlice<scalar_t> in = gradient_slice<kWhich, kWidth>(a, b);
  const int64_t columns = in.columns, logit_chunks = in.logit_chunks;
  const int out_tiles = in.out_tiles;
  const int64_t chunks = logit_chunks + (kWithDp ? ceil_div<int64_t>(c, kChunk) : 0);
  const auto copy_chunk = [&](int64_t o0, int64_t k, int buf) {
    const bool logit = k < logit_chunks;
    const int64_t rows = logit ? d : c, r0 = (logit ? k : k - logit_chunks) * kChunk;
    stage_tile<kRows>(async, Owns + buf * W::kThetaTile, W::kLdRows, logit ? in.own_logit : in.own_dp, rows, n, r0,
                      kChunk, own0);
    stage_tile<kKeys>(async, Others + buf * W::kPhiTile, kLdKey, logit ? in.other_logit : in.other_dp, rows, n, r0,
                      kChunk, o0);
    cp_async_commit();
  };

  // a query-owning block's rows s_row0 + g + 8h: their lse and D
  float row_lse[2] = {0.f, 0.f}, row_dot[2] = {0.f, 0.f};
  if constexpr (kByQuery) query_row_stats(row_lse, row_dot, in.lse, a, b, own0 + s_row0 + g);

  float o[W::kRowTiles][W::kWarpTiles][4] = {};
  int buf = 0;
  if (chunks > 0) copy_chunk(0, 0, 0);
  for (int64_t o0 = 0; o0 < n; o0 += kKeys) {
    stage_tile<kKeys>(async, Zs, kLdKey, in.z, columns, n, 0, out_tiles * kColTile, o0);
    cp_async_commit();
    if constexpr (!kByQuery) stage_query_stats<kKeys>(col_lse, col_dot, in.lse, a, b, o0, kWithDp);
    float s[W::kGroupTiles][4] = {}, dp[W::kGroupTiles][4] = {};
    reduce_chunks(chunks, o0, o0 + kKeys, o0 + kKeys < n, buf, copy_chunk, [&](int64_t k, int at) {
      const smem_ptr<scalar_t> others = Others + at * W::kPhiTile + group * W::kGroupKeys;
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += kDepth) {
        if (k < logit_chunks)
          accumulate_logits<W::kGroupTiles>(s, Owns + at * W::kThetaTile, W::kLdRows, s_row0, others, kLdKey, kk);
        else
          accumulate_logits<W::kGroupTiles>(dp, Owns + at * W::kThetaTile, W::kLdRows, s_row0, others, kLdKey, kk);
      }
    });

    // p (or ds) of each entry into W: rows s_row0 + g + 8h, columns kGroupKeys group + 8j + 2t + e
#pragma unroll
    for (int j = 0; j < W::kGroupTiles; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float w[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = group * W::kGroupKeys + j * kColTile + 2 * t + e;
          const float x = o0 + col < n ? a.scale * s[j][2 * h + e] : mn::neg_inf<float>();
          const float p = mn::probability(x, kByQuery ? row_lse[h] : float(col_lse[col]));
          if constexpr (kWithDp)
            w[e] = mn::scaled_logit_grad(p, dp[j][2 * h + e], kByQuery ? row_dot[h] : float(col_dot[col]), a.scale);
          else
            w[e] = p;
        }
        const int at = (s_row0 + g + 8 * h) * kLdKey + group * W::kGroupKeys + j * kColTile + 2 * t;
        store_entry_pair(Ws, at, w[0], w[1]);
      }
    __syncthreads();
    accumulate_wide<kWidth, scalar_t>(o, Ws, Zs, out_tiles);  // O += W Z^T
    __syncthreads();  // before the next tile restages Z, lse, D and the chunks and rewrites W
  }

  store_block<W::kRowTiles, W::kWarpTiles, kRows, W::kYPart>([&](int i, int f, int e) { return o[i][f][e]; }, Zs,
                                                             in.out, columns, n, own0, 0, warp * W::kWarpCols);
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// The wide gradient's launch: blocks of 512 columns where width <= 512 (tf32, whose narrow blocks
// stop at 128 columns: of 256 where width <= 256), else slices of 1024; the tiles' dynamic shared
// memory opted into first (one call each: FR_LAUNCH names the kernel as written).
template <typename scalar_t, Grad kWhich>
void launch_backward_wide(const Ptrs<scalar_t, float>& a, int64_t width, bool async, cudaStream_t stream) {
  if constexpr (tc::kBackwardSlice<scalar_t> < tc::kSliceWidth) {
    if (width <= tc::kSliceWidth) {
      using W = tc::Wide<tc::kSliceWidth>;
      constexpr size_t kBytes = W::kElements * sizeof(scalar_t);
      FR_OPT_IN_DYNAMIC_SMEM((backward_wide_kernel<scalar_t, kWhich, tc::kSliceWidth>), kBytes);
      FR_LAUNCH((backward_wide_kernel<scalar_t, kWhich, tc::kSliceWidth>),
                tile_grid(a.batch, a.positions, width, W::kRows, tc::kSliceWidth), dim3(W::kThreads), kBytes, stream,
                a, async);
      return;
    }
  }
  if (width <= 512) {
    using W = tc::Wide<512>;
    constexpr size_t kBytes = W::kElements * sizeof(scalar_t);
    FR_OPT_IN_DYNAMIC_SMEM((backward_wide_kernel<scalar_t, kWhich, 512>), kBytes);
    FR_LAUNCH((backward_wide_kernel<scalar_t, kWhich, 512>), tile_grid(a.batch, a.positions, width, W::kRows, 512),
              dim3(W::kThreads), kBytes, stream, a, async);
  } else {
    using W = tc::Wide<tc::kWideSlice>;
    constexpr size_t kBytes = W::kElements * sizeof(scalar_t);
    FR_OPT_IN_DYNAMIC_SMEM((backward_wide_kernel<scalar_t, kWhich, tc::kWideSlice>), kBytes);
    FR_LAUNCH((backward_wide_kernel<scalar_t, kWhich, tc::kWideSlice>),
              tile_grid(a.batch, a.positions, width, W::kRows, tc::kWideSlice), dim3(W::kThreads), kBytes, stream, a,
              async);
  }
}

// One gradient's launch: blocks of the narrowest of 64, 128 and kBackwardSlice columns that holds
// its width; wider, the wide kernel.
template <typename scalar_t, Grad kWhich>
void launch_backward_gradient(const Ptrs<scalar_t, float>& a, int64_t width, bool async, cudaStream_t stream) {
  constexpr int kSlice = tc::kBackwardSlice<scalar_t>;
  const dim3 block(kThreads);
  // (FR_LAUNCH names the kernel as written, for the emulator's launch log: one call each)
  if (width <= 64) {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, 64>), tile_grid(a.batch, a.positions, width, tc::kQueries, 64),
              block, 0, stream, a, async);
  } else if (width <= 128) {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, 128>), tile_grid(a.batch, a.positions, width, tc::kQueries, 128),
              block, 0, stream, a, async);
  } else if (width > kSlice) {
    launch_backward_wide<scalar_t, kWhich>(a, width, async, stream);
  } else if constexpr (kSlice != 128) {
    FR_LAUNCH((backward_mma_kernel<scalar_t, kWhich, kSlice>),
              tile_grid(a.batch, a.positions, width, tc::kQueries, kSlice), block, 0, stream, a, async);
  }
}

// fused_key_gradients_kernel's launch on blocks of `keys` keys, its tiles' dynamic shared memory
// opted into first (one call each: FR_LAUNCH names the kernel as written).
template <typename scalar_t>
void launch_fused_key_gradients(const Ptrs<scalar_t, float>& a, int keys, bool async, cudaStream_t stream) {
  const dim3 block(tc::kFusedThreads);
  if (keys == 64) {
    constexpr size_t kBytes = tc::Fused<64>::kElements<scalar_t> * sizeof(scalar_t);
    FR_OPT_IN_DYNAMIC_SMEM((fused_key_gradients_kernel<scalar_t, 64>), kBytes);
    FR_LAUNCH((fused_key_gradients_kernel<scalar_t, 64>), tile_grid(a.batch, a.positions, 1, 64, 1), block, kBytes,
              stream, a, async);
  } else {
    constexpr size_t kBytes = tc::Fused<32>::kElements<scalar_t> * sizeof(scalar_t);
    FR_OPT_IN_DYNAMIC_SMEM((fused_key_gradients_kernel<scalar_t, 32>), kBytes);
    FR_LAUNCH((fused_key_gradients_kernel<scalar_t, 32>), tile_grid(a.batch, a.positions, 1, 32, 1), block, kBytes,
              stream, a, async);
  }
}

// D first, then dg and dphi (in one kernel where fused_key_tile), and dtheta.
template <typename scalar_t>
void launch_backward_mma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  launch_row_dot(a, stream);
  const bool async = async_staging<scalar_t>(a.positions, a.theta, a.phi, a.g, a.grad_y);
  const int keys = fused_key_tile<scalar_t>(a.dim, a.channels);
  if (keys != 0) {
    launch_fused_key_gradients<scalar_t>(a, keys, async, stream);
    return launch_backward_gradient<scalar_t, Grad::kTheta>(a, a.dim, async, stream);
  }
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
