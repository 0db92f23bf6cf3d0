#pragma once
// The softmax non-local-means forward on tensor cores for outputs wider than 256 channels (fp16
// and bf16 on m16n8k16, fp32 as tf32 on m16n8k8): one walk over the keys that forms each logit
// once, where forward_mma_kernel (nlm_mma_forward.cuh), whose O stays in one warp's registers,
// forms them again in every 256-channel slice (1.33x the forward's minimal FLOPs at C = 512,
// d = 256; 2x at 1024).
//
// A block has 8 warps and owns kRows queries of one sample and up to kWidth channels (Wide:
// 64 queries at 512 channels, 32 at 1024, so that O takes 128 floats a lane either way); wider
// outputs come in slices of 1024, one per blockIdx.y. Per tile of 32 keys:
//   1. warp w forms the logits of one 16-row tile of the queries (w % kRowTiles) and one share
//      of the keys (w / kRowTiles: 16 keys at 64 queries, 8 at 32), theta and phi staged in
//      chunks of 32 rows of d, double-buffered (reduce_chunks, as forward_mma_kernel);
//   2. each warp's maxima of its rows over its keys go through shared memory (part_max); a
//      row's new max is its old one's and those; P = exp(scale S - m_new), rounded to the input
//      type (tf32: a float, rounded when read), goes to shared memory [query][key] (Ps) and its
//      row sums (of the float values) to part_sum. Thread r (r < kRows) keeps row r's
//      statistics: it writes the new max and the rescaling factor exp(m_old - m_new) of its row
//      (row_alpha) and updates its sum l;
//   3. every warp holds all kRows rows of O for its eighth of the channels (kWidth / 8): it
//      rescales them by row_alpha and adds P g^T, P's A operand read from Ps once per row tile
//      and step, g's B operand once for all row tiles.
// Each row's running max lives in shared memory in two copies that alternate per key tile, so
// that a tile's readers (every warp, in step 2) and its writer (thread r) never meet on one.
// At the end thread r writes the lse and 1 / l of its row, and the block writes y through the g
// tile's storage (store_block).
//
// Shared memory: the tiles are dynamic, over the 48 KiB a block gets without opting in
// (FR_OPT_IN_DYNAMIC_SMEM): 60,416 bytes at 512 channels, 94,720 at 1024 (twice that for tf32's
// floats: 120,832 and 189,440; the tf32 backward's 128 x 256 block: 106,496); the row statistics
// are static (1,792 and 1,408 bytes).
// Bank conflicts: Ps has pitch 40 (20 words a row): P's 16-bit A-operand reads (rows g, words t)
// and its writes (a row per g, a pair of keys per t) fall on 8 x 4 distinct banks; theta, phi
// and g are read as in forward_mma_kernel (theta's pitch at 32 queries is 40: rows 2t start 40t
// words apart, 8 banks). tf32's tiles have the same pitches in floats: 40 and 72 are 8 banks
// apart a row, so the logits' scalar reads (row t, column g: bank 8t + g) are conflict-free and
// the 8-byte pairs of P and g (rows g, words 2t, 2t + 1) take one wavefront per half-warp.
#include "nlm_mma_forward.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace tc {
constexpr int kWideSlice = 1024;  // channels per block of the wide forward at most
// The wide blocks: 8 warps, kRows x kWidth outputs (128 floats a lane): 64 x 512 and 32 x 1024,
// and 128 x 256 (the tf32 backward between its narrow blocks' 128 columns and 256).
template <int kWidth>
struct Wide {
  static constexpr int kWarps = 8, kThreads = kWarps * kWarpSize;
  static constexpr int kRows = 64 * 512 / kWidth;  // O: kRows x kWidth floats, 128 a lane
  static constexpr int kRowTiles = kRows / kWmmaDim;
  static constexpr int kKeyGroups = kWarps / kRowTiles;  // warps sharing a row tile's logits
  static constexpr int kKeys = 32, kLdKey = kKeys + 8;
  static constexpr int kGroupKeys = kKeys / kKeyGroups, kGroupTiles = kGroupKeys / kColTile;
  static constexpr int kWarpCols = kWidth / kWarps, kWarpTiles = kWarpCols / kColTile;
  static constexpr int kLdRows = kRows + 8;  // theta's chunk [k][query] and y's tile [channel][query]
  static constexpr int kThetaTile = kChunk * kLdRows, kPhiTile = kChunk * kLdKey;
  static constexpr int kGTile = kWidth * kLdKey, kPTile = kRows * kLdKey;
  static constexpr int kElements = 2 * kThetaTile + 2 * kPhiTile + kGTile + kPTile;  // the dynamic tiles
  static constexpr int kYPart = y_part(kWidth, kGTile, kLdRows);  // channels of y written per round
  static_assert(kRowTiles * kKeyGroups == kWarps && kGroupTiles >= 1, "the warps cover the logits' tile once");
  static_assert(kYPart % kColTile == 0 && kLdRows % 8 == 0, "whole column tiles, 16-byte rows");
  static_assert(kThetaTile % 8 == 0 && kPhiTile % 8 == 0 && kGTile % 8 == 0, "16-byte aligned tiles");
  static_assert(kLdRows % 32 == 8 && kLdKey % 32 == 8, "the pitches the bank analysis above assumes");
};
}  // namespace tc

#if FR_HAS_WMMA
// The accumulators of all kRows rows of a wide block, one warp's eighth of the columns.
template <int kWidth>
using WideAccumulators = float[tc::Wide<kWidth>::kRowTiles][tc::Wide<kWidth>::kWarpTiles][4];

// o (all kRows rows of the block, this warp's eighth of the columns) += W Z^T over a tile of
// kKeys positions of the other axis, kDepth a step: W from shared memory ([row][other], pitch
// kLdKey), its A operand read once per row tile and step; Z ([column][other], pitch kLdKey) as
// the B operand, read once for all row tiles; only the out_tiles column tiles that hold columns
// run.
template <int kWidth, typename scalar_t>
__device__ __forceinline__ void accumulate_wide(WideAccumulators<kWidth>& o, smem_ptr<scalar_t> Ws,
                                                smem_ptr<scalar_t> Zs, int out_tiles) {
  using W = tc::Wide<kWidth>;
  constexpr int kDepth = tc::OnePass<scalar_t>::kDepth, kLd = W::kLdKey;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const smem_ptr<scalar_t> warp_z = Zs + warp * W::kWarpCols * kLd;
#pragma unroll
  for (int u = 0; u < W::kKeys / kDepth; ++u) {
    uint32_t wa[W::kRowTiles][4];
#pragma unroll
    for (int i = 0; i < W::kRowTiles; ++i) w_operand<scalar_t>(wa[i], Ws, kLd, i * kWmmaDim, u);
#pragma unroll
    for (int f = 0; f < W::kWarpTiles; ++f) {
      if (warp * W::kWarpTiles + f >= out_tiles) break;  // the same for the whole warp
      uint32_t bv[2];
      g_operand<scalar_t>(bv, warp_z, kLd, f, u);
#pragma unroll
      for (int i = 0; i < W::kRowTiles; ++i) mma<scalar_t>(o[i][f], wa[i], bv);
    }
  }
}
#endif

// y and lse of Wide<kWidth>::kRows queries of sample blockIdx.z, for channels blockIdx.y * kWidth
// and on (at most kWidth of them); the blocks of slice 0 write lse.
template <typename scalar_t, int kWidth>
__global__ void __launch_bounds__(tc::Wide<kWidth>::kThreads) forward_wide_kernel(Ptrs<scalar_t, float> a,
                                                                                  bool async) {
#if FR_HAS_WMMA
  using namespace tc;
  using W = Wide<kWidth>;
  static_assert(kMmaInput<scalar_t> || std::is_same_v<scalar_t, float>, "m16n8k16 or tf32's m16n8k8");
  constexpr int kDepth = OnePass<scalar_t>::kDepth, kRows = W::kRows, kLdKey = W::kLdKey;
  FR_DYNAMIC_SMEM(scalar_t, tiles);
  const smem_ptr<scalar_t> Ths = tiles;                  // theta [k][query], two chunks
  const smem_ptr<scalar_t> Phs = Ths + 2 * W::kThetaTile;  // phi [k][key], two chunks
  const smem_ptr<scalar_t> Gs = Phs + 2 * W::kPhiTile;     // g [channel][key]; at the end y
  const smem_ptr<scalar_t> Ps = Gs + W::kGTile;            // P [query][key]
  FR_SHARED(float, part_max, W::kKeyGroups * kRows);  // [key group][query]
  FR_SHARED(float, part_sum, W::kKeyGroups * kRows);
  FR_SHARED(float, row_max, 2 * kRows);  // two copies, alternating per key tile
  FR_SHARED(float, row_alpha, kRows);    // exp(m_old - m_new) of the tile; at the end 1 / l

  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int s_row0 = (warp % W::kRowTiles) * kWmmaDim, group = warp / W::kRowTiles;  // the warp's logits
  const int64_t b = blockIdx.z, q0 = int64_t(blockIdx.x) * kRows, n = a.positions;
  const ForwardSlice<scalar_t> in = forward_slice<kWidth>(a, b);
  const auto theta = in.theta, phi = in.phi, values = in.values;
  const int64_t c_first = in.c_first, channels = in.channels, chunks = in.chunks;
  const int out_tiles = in.out_tiles;
  const auto copy_chunk = [&](int64_t k0, int64_t c, int buf) {
    stage_tile<kRows>(async, Ths + buf * W::kThetaTile, W::kLdRows, theta, a.dim, n, c * kChunk, kChunk, q0);
    stage_tile<W::kKeys>(async, Phs + buf * W::kPhiTile, kLdKey, phi, a.dim, n, c * kChunk, kChunk, k0);
    cp_async_commit();
  };

  float o[W::kRowTiles][W::kWarpTiles][4] = {};
  float m = mn::neg_inf<float>(), l = 0.f;  // row tid's (tid < kRows)
  if (tid < kRows) row_max[tid] = m;
  int buf = 0, parity = 0;
  if (chunks > 0) copy_chunk(0, 0, 0);
  for (int64_t k0 = 0; k0 < n; k0 += W::kKeys, parity ^= 1) {
    stage_tile<W::kKeys>(async, Gs, kLdKey, values, channels, n, 0, out_tiles * kColTile, k0);
    cp_async_commit();
    float s[W::kGroupTiles][4] = {};
    reduce_chunks(chunks, k0, k0 + W::kKeys, k0 + W::kKeys < n, buf, copy_chunk, [&](int64_t, int at) {
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += kDepth)
        accumulate_logits<W::kGroupTiles>(s, Ths + at * W::kThetaTile, W::kLdRows, s_row0,
                                          Phs + at * W::kPhiTile + group * W::kGroupKeys, kLdKey, kk);
    });
    const smem_ptr<float> m_old = row_max + parity * kRows, m_next = row_max + (parity ^ 1) * kRows;

    // 2. the maxima of rows s_row0 + g + 8h over this warp's keys, then each row's new max
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float part = mn::neg_inf<float>();
#pragma unroll
      for (int j = 0; j < W::kGroupTiles; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t key = k0 + group * W::kGroupKeys + j * kColTile + 2 * t + e;
          float& x = s[j][2 * h + e];
          x = key < n ? a.scale * x : mn::neg_inf<float>();
          part = mn::RowMax{}(part, x);
        }
      part = mn::RowMax{}(part, __shfl_xor_sync(0xffffffffu, part, 1));
      part = mn::RowMax{}(part, __shfl_xor_sync(0xffffffffu, part, 2));
      if (t == 0) part_max[group * kRows + s_row0 + g + 8 * h] = part;
    }
    __syncthreads();
    const auto new_max = [&](int r) {
      float mr = static_cast<float>(m_old[r]);
#pragma unroll
      for (int k = 0; k < W::kKeyGroups; ++k) mr = mn::RowMax{}(mr, static_cast<float>(part_max[k * kRows + r]));
      return mr;
    };
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = s_row0 + g + 8 * h;
      const float m_new = new_max(r);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < W::kGroupTiles; ++j) {
        const float p0 = mn::shifted_weight(s[j][2 * h], m_new), p1 = mn::shifted_weight(s[j][2 * h + 1], m_new);
        sum += p0 + p1;
        store_entry_pair(Ps, r * kLdKey + group * W::kGroupKeys + j * kColTile + 2 * t, p0, p1);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      if (t == 0) part_sum[group * kRows + r] = sum;
    }
    float alpha = 0.f;
    if (tid < kRows) {
      const float m_new = new_max(tid);
      alpha = mn::rescale(m, m_new);
      row_alpha[tid] = alpha;
      m_next[tid] = m_new;
      m = m_new;
    }
    __syncthreads();
    if (tid < kRows) {
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < W::kKeyGroups; ++k) sum += static_cast<float>(part_sum[k * kRows + tid]);
      l = l * alpha + sum;
    }

    // 3. O (all rows, this warp's channels) rescaled, then += P g^T, kDepth keys a step
#pragma unroll
    for (int i = 0; i < W::kRowTiles; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float scale = static_cast<float>(row_alpha[i * kWmmaDim + g + 8 * h]);
#pragma unroll
        for (int f = 0; f < W::kWarpTiles; ++f) {
          o[i][f][2 * h] *= scale;
          o[i][f][2 * h + 1] *= scale;
        }
      }
    accumulate_wide<kWidth, scalar_t>(o, Ps, Gs, out_tiles);
    __syncthreads();  // before the next tile restages g, theta and phi and rewrites P
  }

  if (tid < kRows) {
    if (blockIdx.y == 0 && q0 + tid < n) a.lse[b * n + q0 + tid] = mn::row_lse(m, l);
    row_alpha[tid] = 1.f / l;
  }
  __syncthreads();
  FR_GLOBAL(scalar_t) out = a.out + (b * a.channels + c_first) * n;
  store_block<W::kRowTiles, W::kWarpTiles, kRows, W::kYPart>(
      [&](int i, int f, int e) { return o[i][f][e] * static_cast<float>(row_alpha[i * kWmmaDim + g + 8 * (e / 2)]); },
      Gs, out, channels, n, q0, 0, warp * W::kWarpCols);
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// The wide forward's launch: its tiles' dynamic shared memory opted into first.
template <typename scalar_t, int kWidth>
void launch_forward_wide(const Ptrs<scalar_t, float>& a, bool async, cudaStream_t stream) {
  using W = tc::Wide<kWidth>;
  constexpr size_t kBytes = W::kElements * sizeof(scalar_t);
  const dim3 grid = tile_grid(a.batch, a.positions, a.channels, W::kRows, kWidth);
  if constexpr (kWidth == 512) {  // (FR_LAUNCH names the kernel as written: one call each)
    FR_OPT_IN_DYNAMIC_SMEM((forward_wide_kernel<scalar_t, 512>), kBytes);
    FR_LAUNCH((forward_wide_kernel<scalar_t, 512>), grid, dim3(W::kThreads), kBytes, stream, a, async);
  } else {
    static_assert(kWidth == tc::kWideSlice, "the wide forward's two widths");
    FR_OPT_IN_DYNAMIC_SMEM((forward_wide_kernel<scalar_t, tc::kWideSlice>), kBytes);
    FR_LAUNCH((forward_wide_kernel<scalar_t, tc::kWideSlice>), grid, dim3(W::kThreads), kBytes, stream, a, async);
  }
}

// The tensor-core forward in one pass: on blocks of the narrowest of 64, 128 and 256 columns that
// holds C; above that the wide forward's blocks of 512 or slices of 1024.
template <typename scalar_t>
void launch_forward_mma(const Ptrs<scalar_t, float>& a, cudaStream_t stream) {
  const dim3 block(kThreads);
  const bool async = async_staging<scalar_t>(a.positions, a.theta, a.phi, a.g);
  if (a.channels <= 64) {
    FR_LAUNCH((forward_mma_kernel<scalar_t, 64>), tile_grid(a.batch, a.positions, a.channels, tc::kQueries, 64), block,
              0, stream, a, async);
  } else if (a.channels <= 128) {
    FR_LAUNCH((forward_mma_kernel<scalar_t, 128>), tile_grid(a.batch, a.positions, a.channels, tc::kQueries, 128),
              block, 0, stream, a, async);
  } else if (a.channels <= tc::kSliceWidth) {
    FR_LAUNCH((forward_mma_kernel<scalar_t, tc::kSliceWidth>),
              tile_grid(a.batch, a.positions, a.channels, tc::kQueries, tc::kSliceWidth), block, 0, stream, a, async);
  } else {
    if (a.channels <= 512)
      launch_forward_wide<scalar_t, 512>(a, async, stream);
    else
      launch_forward_wide<scalar_t, tc::kWideSlice>(a, async, stream);
  }
}

// The forward for any input type: tensor cores where use_tensor_cores, SIMT otherwise (the
// backward: nlm_mma_backward.cuh).
template <typename scalar_t>
void launch_forward(const Ptrs<scalar_t, acc_t<scalar_t>>& a, const TensorCores& tensor_cores,
                    const PlaneBuffers& buffers, cudaStream_t stream) {
  if constexpr (kHasTensorCorePath<scalar_t>) {
    if (use_tensor_cores<scalar_t>(tensor_cores)) return launch_forward_mma<scalar_t>(a, stream);
  }
  launch_forward<scalar_t>(a, buffers, stream);
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
