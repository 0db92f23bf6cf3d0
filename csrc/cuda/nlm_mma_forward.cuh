#pragma once
// The softmax non-local-means forward on tensor cores, FlashAttention-2's forward: y and lse in
// one walk over the keys, every product an mma.sync (csrc/common/mma.cuh) whose accumulators
// stay in registers: m16n8k16 for fp16 / bf16, m16n8k8 of tf32 for fp32 (where tf32 is allowed).
//
// A block has 4 warps and owns kQueries = 64 queries (warp w: rows 16w .. 16w + 15) and a slice
// of up to kWidth channels (64, 128 or 256: O takes kWidth / 2 floats a lane); the keys come in
// tiles of 32 (16 for fp32: OnePass). Above kSliceWidth = 256 channels the forward is
// forward_wide_kernel (nlm_mma_forward_wide.cuh), which forms each logit once, where slices of
// 256, each computing the logits of its queries again, would take 1.33x and 2x the forward's
// minimal FLOPs at C = 512 and 1024 (d = C / 2).
//
// Lane (g = lane / 4, t = lane % 4) of a warp holds rows g and g + 8 of the warp's 16 and, of
// each 8-column tile, columns 2t and 2t + 1. Per key tile:
//   1. S (16 x keys per warp, tiles of 16 x 8) accumulates over the width d in chunks of 32,
//      theta and phi staged in shared memory as they are in global memory ([k][position]), in
//      two buffers: the next chunk (of this key tile or the next) is copied while this one is
//      multiplied;
//   2. each row's max m and sum l are updated from its entries in 4 lanes (two shuffles), the
//      row's output accumulators rescaled by exp(m_old - m), and P = exp(scale S - m) rounded to
//      the input type (tf32 for fp32): the accumulators of P are the A operand of the next
//      product (p_operand), so P never leaves registers;
//   3. O (16 x kWidth per warp) += P g^T, g staged [channel][key]; only the 8-column tiles that
//      hold channels run.
// The g tile's copy is issued as the key tile starts and waited for with the first chunk. Where
// N is a multiple of 16 bytes' elements and the inputs are 16-byte aligned the tiles come by
// 16-byte cp.async (csrc/common/cp_async.cuh), otherwise by plain loads.
// P is rounded before the product, as FlashAttention does; l sums the float values. At the end
// each warp writes O / l, rounded, into the g tile's storage as [channel][query] (kYPart
// channels at a time) and the block writes y from it along positions.
//
// Shared reads, free of bank conflicts:
//   - 16-bit: the A operand of S reads theta rows 2t and 2t + 1 (kLdTheta = 72 elements, 36
//     words apart: the 4 t start 8 banks apart, the 8 g share 4 words), B reads phi (pitch 40:
//     20 words a row) and g (pairs of keys, one 32-bit word; 20 words a channel);
//   - fp32: A reads theta rows t and t + 4 (72 words apart: the 4 t 8 banks apart, the 8 g
//     consecutive), B reads phi (pitch 24: 24 t mod 32 = 0, 24, 16, 8) and g as 8-byte pairs of
//     keys (a wavefront per half warp: its 4 g 24 words apart, its 4 t 2 words apart).
#include <algorithm>
#include <type_traits>

#include "../common/cp_async.cuh"
#include "../common/mma.cuh"
#include "../common/wmma.cuh"  // kWmmaDim, FR_HAS_WMMA
#include "nlm_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace tc {
constexpr int kQueries = 64;  // own positions per block (16 per warp)
constexpr int kChunk = 32;    // rows of the reduction staged per barrier pair
constexpr int kWarps = kQueries / kWmmaDim;
// Pitch of the own positions' chunk ([k][position]): a multiple of 16 bytes, off a multiple of
// 128 bytes against bank conflicts.
constexpr int kLdTheta = kQueries + 8;
static_assert(kThreads == kWarps * kWarpSize, "one warp per 16 own rows");
static_assert(kChunk % kWmmaDim == 0, "whole warp products per chunk");
constexpr int kSliceWidth = 256;  // channels per block at most (O: 128 floats a lane)
constexpr int kColTile = 8;       // columns of an m16n8 accumulator
// Per input type: the reduction depth of one product (16 for fp16 / bf16 on m16n8k16, 8 for
// tf32 on m16n8k8), the keys of a tile and the pitch of the phi and g tiles. fp32's tiles take
// twice the bytes, so its key tiles are 16 keys (pitch 24 floats): a 256-channel g tile and the
// double-buffered theta and phi chunks then fit the 48 KiB of static shared memory.
template <typename scalar_t>
struct OnePass {
  static constexpr bool kTf32 = std::is_same_v<scalar_t, float>;
  static constexpr int kDepth = kTf32 ? 8 : 16;
  static constexpr int kKeys = kTf32 ? 16 : 32;
  static constexpr int kLdKey = kKeys + 8;
};
static_assert(kLdTheta * 2 % 128 == 16 && OnePass<c10::BFloat16>::kLdKey * 2 % 128 == 80,
              "the 16-bit pitches the bank analysis above assumes");
static_assert(kLdTheta % 32 == 8 && OnePass<float>::kLdKey % 32 == 24, "the fp32 pitches the bank analysis assumes");
// The largest power-of-two share of kWidth channels whose y tile ([channel][query], pitch
// kLdTheta or pitch) fits in the g tile's storage (capacity elements).
constexpr int y_part(int width, int capacity, int pitch = kLdTheta) {
  return width * pitch <= capacity ? width : y_part(width / 2, capacity, pitch);
}
}  // namespace tc

#if FR_HAS_WMMA
// d += A B on the type's instruction: m16n8k16 for fp16 / bf16, m16n8k8 of tf32 for fp32.
template <typename scalar_t>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                    const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if constexpr (std::is_same_v<scalar_t, float>)
    mma_m16n8k8_tf32(d, a, b, file, line);
  else
    mma_m16n8k16<scalar_t>(d, a, b, file, line);
}

// acc[j] += (the warp's 16 rows of A) times the 16 x 8 tile j of B, over the kDepth rows k0 ..
// of the reduction: A col-major in shared memory ([k][row], ld_a, the warp's rows from row0), B
// row-major ([k][column], ld_b).
template <int kTiles, typename scalar_t>
__device__ __forceinline__ void accumulate_logits(float (&acc)[kTiles][4], smem_ptr<scalar_t> As, int ld_a,
                                                  int row0, smem_ptr<scalar_t> Bs, int ld_b, int k0) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, g = lane / 4, t = lane % 4;
  const auto a_at = [&](int k, int r) { return static_cast<scalar_t>(As[(k0 + k) * ld_a + row0 + r]); };
  if constexpr (std::is_same_v<scalar_t, float>) {
    const uint32_t a[4] = {tf32_bits(a_at(t, g)), tf32_bits(a_at(t, g + 8)), tf32_bits(a_at(t + 4, g)),
                           tf32_bits(a_at(t + 4, g + 8))};
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const auto b_at = [&](int k) { return static_cast<float>(Bs[(k0 + k) * ld_b + j * tc::kColTile + g]); };
      const uint32_t b[2] = {tf32_bits(b_at(t)), tf32_bits(b_at(t + 4))};
      mma<scalar_t>(acc[j], a, b);
    }
  } else {
    const uint32_t a[4] = {pack_pair(a_at(2 * t, g), a_at(2 * t + 1, g)),
                           pack_pair(a_at(2 * t, g + 8), a_at(2 * t + 1, g + 8)),
                           pack_pair(a_at(2 * t + 8, g), a_at(2 * t + 9, g)),
                           pack_pair(a_at(2 * t + 8, g + 8), a_at(2 * t + 9, g + 8))};
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const auto b_at = [&](int k) { return static_cast<scalar_t>(Bs[(k0 + k) * ld_b + j * tc::kColTile + g]); };
      const uint32_t b[2] = {pack_pair(b_at(2 * t), b_at(2 * t + 1)), pack_pair(b_at(2 * t + 8), b_at(2 * t + 9))};
      mma<scalar_t>(acc[j], a, b);
    }
  }
}

// P's accumulators s (kKeyTiles tiles of 16 x 8) as the A operand of reduction step u of P g^T:
// 16-bit values take keys 16u .. 16u + 15, tiles 2u and 2u + 1, in their accumulator layout;
// tf32 takes tile u, whose lane holds keys 2t and 2t + 1 where the A operand wants columns t and
// t + 4: the step's columns are read as keys 0, 2, 4, 6, 1, 3, 5, 7 (g_operand reads B's rows
// in the same order).
template <typename scalar_t, int kKeyTiles>
__device__ __forceinline__ void p_operand(uint32_t (&p)[4], const float (&s)[kKeyTiles][4], int u) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    p[0] = tf32_bits(s[u][0]);
    p[1] = tf32_bits(s[u][2]);
    p[2] = tf32_bits(s[u][1]);
    p[3] = tf32_bits(s[u][3]);
  } else {
    p[0] = pack_pair<scalar_t>(s[2 * u][0], s[2 * u][1]);
    p[1] = pack_pair<scalar_t>(s[2 * u][2], s[2 * u][3]);
    p[2] = pack_pair<scalar_t>(s[2 * u + 1][0], s[2 * u + 1][1]);
    p[3] = pack_pair<scalar_t>(s[2 * u + 1][2], s[2 * u + 1][3]);
  }
}

// The B operand of step u of P g^T for the 8 channels of column tile f, g staged [channel][key]
// (pitch ld): each register a pair of adjacent keys (16-bit), or one key of an adjacent pair
// read at once (tf32: keys 2t and 2t + 1 are rows t and t + 4, as p_operand orders them).
template <typename scalar_t>
__device__ __forceinline__ void g_operand(uint32_t (&b)[2], smem_ptr<scalar_t> Gs, int ld, int f, int u) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, g = lane / 4, t = lane % 4;
  if constexpr (std::is_same_v<scalar_t, float>) {
    float lo, hi;
    shared_float_pair(Gs, (f * tc::kColTile + g) * ld + u * 8 + 2 * t, lo, hi);
    b[0] = tf32_bits(lo);
    b[1] = tf32_bits(hi);
  } else {
    const int at = (f * tc::kColTile + g) * ld + u * 16 + 2 * t;
    b[0] = shared_pair(Gs, at);
    b[1] = shared_pair(Gs, at + 8);
  }
}

// The A operand of step u of W Z^T for W's 16 rows from row0 ([row][other], pitch ld): 16-bit
// pairs of adjacent positions; tf32 reads positions 2t and 2t + 1 as columns t and t + 4, the
// order in which g_operand reads Z's.
template <typename scalar_t>
__device__ __forceinline__ void w_operand(uint32_t (&a)[4], smem_ptr<scalar_t> Ws, int ld, int row0, int u) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, g = lane / 4, t = lane % 4;
  if constexpr (std::is_same_v<scalar_t, float>) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // rows g and g + 8: a[h] (column t) and a[h + 2] (t + 4)
      float lo, hi;
      shared_float_pair(Ws, (row0 + g + 8 * h) * ld + u * 8 + 2 * t, lo, hi);
      a[h] = tf32_bits(lo);
      a[h + 2] = tf32_bits(hi);
    }
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r)  // rows g (r even) and g + 8, positions 16u + 2t (r < 2) and + 8
      a[r] = shared_pair(Ws, (row0 + g + 8 * (r % 2)) * ld + u * 16 + 2 * t + 8 * (r / 2));
  }
}

// W's entries at and at + 1 (at even, one row): rounded to the 16-bit input type, or tf32's
// floats as one 8-byte store (rounded to tf32 where they are read as an operand).
template <typename scalar_t>
__device__ __forceinline__ void store_entry_pair(smem_ptr<scalar_t> Ws, int at, float lo, float hi) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    store_shared_float_pair(Ws, at, lo, hi);
  } else {
    Ws[at] = static_cast<scalar_t>(lo);
    Ws[at + 1] = static_cast<scalar_t>(hi);
  }
}

// o (the warp's 16 rows of an output, in tiles of 8 columns) += W (the warp's 16 rows of a tile
// of the other axis, in the accumulators w) times Z^T, Z staged [column][other] with pitch ld:
// W's accumulators are the A operand (p_operand), kDepth positions a step; only the out_tiles
// tiles that hold columns run.
template <typename scalar_t, int kOutTiles, int kKeyTiles>
__device__ __forceinline__ void accumulate_output(float (&o)[kOutTiles][4], const float (&w)[kKeyTiles][4],
                                                  smem_ptr<scalar_t> Zs, int ld, int out_tiles) {
  constexpr int kDepth = tc::OnePass<scalar_t>::kDepth;
#pragma unroll
  for (int u = 0; u < kKeyTiles * tc::kColTile / kDepth; ++u) {
    uint32_t a[4];
    p_operand<scalar_t>(a, w, u);
#pragma unroll
    for (int f = 0; f < kOutTiles; ++f) {
      if (f >= out_tiles) break;  // the same for the whole block
      uint32_t b[2];
      g_operand<scalar_t>(b, Zs, ld, f, u);
      mma<scalar_t>(o[f], a, b);
    }
  }
}
#endif

// stage() (nlm_kernels.cuh) by 16-byte cp.async copies, 8 positions each: n a multiple of 8 and
// src 16-byte aligned, dst's rows a multiple of 16 bytes apart. Rows and positions outside the
// (width, n) slice are zero-filled.
template <int kCols, typename scalar_t>
__device__ __forceinline__ void stage_async(smem_ptr<scalar_t> dst, int stride, FR_GLOBAL(const scalar_t) src,
                                            int64_t width, int64_t n, int64_t w0, int rows, int64_t p0) {
  constexpr int kVec = 16 / sizeof(scalar_t), kPerRow = kCols / kVec;
  static_assert(kCols % kVec == 0, "whole 16-byte copies");
  for (int e = threadIdx.x; e < rows * kPerRow; e += blockDim.x) {
    const int w = e / kPerRow, t = (e % kPerRow) * kVec;
    const int64_t ch = w0 + w, pos = p0 + t;
    const bool inside = ch < width && pos < n;
    cp_async_16(dst + w * stride + t, inside ? src + ch * n + pos : src, inside ? 16 : 0);
  }
}

template <int kCols, typename scalar_t>
__device__ __forceinline__ void stage_tile(bool async, smem_ptr<scalar_t> dst, int stride,
                                           FR_GLOBAL(const scalar_t) src, int64_t width, int64_t n, int64_t w0,
                                           int rows, int64_t p0) {
  if (async)
    stage_async<kCols>(dst, stride, src, width, n, w0, rows, p0);
  else
    stage<kCols>(dst, stride, src, width, n, w0, rows, p0);
}

// The reduction of one tile of the other axis (at o0) over `chunks` chunks, double-buffered:
// copy(o, k, buf) stages chunk k of the tile at o into buffer buf as one group of copies, and
// multiply(k, buf) consumes it. Chunk k + 1 (or the next tile's first, where the tile at next_o0
// exists) is copied while chunk k is multiplied; the caller has copied the first chunk and
// issued the tile's other copies (waited for with its first chunk). Every thread of the block
// calls it.
template <typename Copy, typename Multiply>
__device__ __forceinline__ void reduce_chunks(int64_t chunks, int64_t o0, int64_t next_o0, bool next_exists, int& buf,
                                              Copy copy, Multiply multiply) {
  for (int64_t k = 0; k < chunks; ++k) {
    if (k + 1 < chunks)
      copy(o0, k + 1, buf ^ 1);
    else if (next_exists)
      copy(next_o0, 0, buf ^ 1);
    else
      cp_async_commit();  // an empty group: the wait below leaves the newest group pending
    cp_async_wait<1>();  // this chunk's copies (and the tile's others) have landed
    __syncthreads();
    multiply(k, buf);
    __syncthreads();  // before the buffer is copied into again
    buf ^= 1;
  }
  if (chunks == 0) {  // no chunk waited for the tile's other copies
    cp_async_wait<0>();
    __syncthreads();
  }
}

// Writes a block's output from accumulators spread over its warps: value(i, f, e) is entry e of
// column tile f of row tile i of this warp (row row0 + 16 i + g + 8 (e / 2) of the block's kRows
// own positions, column col0 + 8 f + 2 t + e % 2 of its `columns`), scaled as it is to be
// written. kPart columns at a time go into tile ([column][own position], pitch kRows + 8: the
// g or Z tile's storage) and the block writes them to out ([column][position], own positions
// from own0) along positions. Every thread of the block calls it, after the block's last read
// of tile.
template <int kRowTiles, int kWarpTiles, int kRows, int kPart, typename scalar_t, typename Value>
__device__ __forceinline__ void store_block(Value value, smem_ptr<scalar_t> tile, FR_GLOBAL(scalar_t) out,
                                            int64_t columns, int64_t n, int64_t own0, int row0, int col0) {
  using tc::kColTile;
  constexpr int kLd = kRows + 8;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, g = lane / 4, t = lane % 4;
  cp_async_wait<0>();  // (only empty groups are left)
  for (int c0 = 0; c0 < columns; c0 += kPart) {
#pragma unroll
    for (int f = 0; f < kWarpTiles; ++f) {
      const int first = col0 + f * kColTile;  // the tile's first column
      if (first < c0 || first >= c0 + kPart || first >= columns) continue;
#pragma unroll
      for (int i = 0; i < kRowTiles; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = first + 2 * t + e % 2 - c0, r = row0 + i * kWmmaDim + g + 8 * (e / 2);
          tile[col * kLd + r] = static_cast<scalar_t>(value(i, f, e));
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kPart * kRows; e += blockDim.x) {
      const int col = e / kRows, r = e % kRows;
      if (c0 + col < columns && own0 + r < n)
        out[(c0 + col) * n + own0 + r] = static_cast<scalar_t>(tile[col * kLd + r]);
    }
    __syncthreads();  // before the next round overwrites the tile
  }
}

// store_block for a warp whose accumulators o are 16 rows from row0 (of the block's kQueries)
// and kWarpWidth columns from col0, rows g and g + 8 times row_scale[0] and [1].
template <int kWarpWidth, int kPart, typename scalar_t>
__device__ __forceinline__ void store_columns(const float (&o)[kWarpWidth / tc::kColTile][4],
                                              const float (&row_scale)[2], smem_ptr<scalar_t> tile,
                                              FR_GLOBAL(scalar_t) out, int64_t columns, int64_t n, int64_t own0,
                                              int row0, int col0) {
  store_block<1, kWarpWidth / tc::kColTile, tc::kQueries, kPart>(
      [&](int, int f, int e) { return o[f][e] * row_scale[e / 2]; }, tile, out, columns, n, own0, row0, col0);
}

// store_columns for a block whose warp w holds rows 16w .. 16w + 15 of every column.
template <int kWidth, int kPart, typename scalar_t>
__device__ __forceinline__ void store_output(const float (&o)[kWidth / tc::kColTile][4], const float (&row_scale)[2],
                                             smem_ptr<scalar_t> tile, FR_GLOBAL(scalar_t) out, int64_t columns,
                                             int64_t n, int64_t own0) {
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  store_columns<kWidth, kPart>(o, row_scale, tile, out, columns, n, own0, warp * kWmmaDim, 0);
}

// Whether the tiles can come by 16-byte cp.async: n a multiple of 16 bytes' elements and every
// input 16-byte aligned.
template <typename scalar_t, typename... P>
bool async_staging(int64_t n, const P*... inputs) {
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  return n % (16 / sizeof(scalar_t)) == 0 && (aligned(inputs) && ...);
}

// What a forward block of sample b reads and how much of it: theta and phi, and g's channels
// from blockIdx.y * kWidth (at most kWidth of them, in out_tiles 8-column tiles); d in chunks.
template <typename scalar_t>
struct ForwardSlice {
  FR_GLOBAL(const scalar_t) theta;
  FR_GLOBAL(const scalar_t) phi;
  FR_GLOBAL(const scalar_t) values;
  int64_t c_first, channels, chunks;
  int out_tiles;  // the same for every thread
};

template <int kWidth, typename scalar_t>
__device__ __forceinline__ ForwardSlice<scalar_t> forward_slice(const Ptrs<scalar_t, float>& a, int64_t b) {
  const int64_t n = a.positions, c_first = int64_t(blockIdx.y) * kWidth;
  const int64_t channels = std::min<int64_t>(kWidth, a.channels - c_first);
  return {a.theta + b * a.dim * n, a.phi + b * a.dim * n, a.g + (b * a.channels + c_first) * n, c_first, channels,
          ceil_div<int64_t>(a.dim, tc::kChunk), static_cast<int>(ceil_div<int64_t>(channels, tc::kColTile))};
}

// y and lse of kQueries queries of one sample, for channels blockIdx.y * kWidth and on (at most
// kWidth of them); the blocks of slice 0 write lse.
template <typename scalar_t, int kWidth>
__global__ void __launch_bounds__(kThreads) forward_mma_kernel(Ptrs<scalar_t, float> a, bool async) {
#if FR_HAS_WMMA
  using namespace tc;
  constexpr int kTileKeys = OnePass<scalar_t>::kKeys, kPitchKey = OnePass<scalar_t>::kLdKey;
  constexpr int kDepth = OnePass<scalar_t>::kDepth;
  constexpr int kKeyTiles = kTileKeys / kColTile, kOutTiles = kWidth / kColTile;
  constexpr int kThetaTile = kChunk * kLdTheta, kPhiTile = kChunk * kPitchKey;
  constexpr int kYPart = y_part(kWidth, kWidth * kPitchKey);  // channels of y written per round
  static_assert(kTileKeys % kDepth == 0 && kChunk % kDepth == 0 && kWidth % (2 * kColTile) == 0, "tile shape");
  static_assert(kYPart % kColTile == 0, "whole column tiles of y per round");
  static_assert(kLdTheta * sizeof(scalar_t) % 16 == 0 && kPitchKey * sizeof(scalar_t) % 16 == 0, "16-byte rows");
  FR_SHARED_ALIGNED(16, scalar_t, Ths, 2 * kThetaTile);  // theta [k][query], two chunks
  FR_SHARED_ALIGNED(16, scalar_t, Phs, 2 * kPhiTile);    // phi [k][key], two chunks
  FR_SHARED_ALIGNED(16, scalar_t, Gs, kWidth * kPitchKey);  // g [channel][key]; at the end y [channel][query]

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int g = lane / 4, t = lane % 4, row0 = warp * kWmmaDim;
  const int64_t b = blockIdx.z, q0 = int64_t(blockIdx.x) * kQueries, n = a.positions;
  const ForwardSlice<scalar_t> in = forward_slice<kWidth>(a, b);
  const auto theta = in.theta, phi = in.phi, values = in.values;
  const int64_t c_first = in.c_first, channels = in.channels, chunks = in.chunks;
  const int out_tiles = in.out_tiles;
  // The theta and phi chunk c of key tile k0 into buffer buf, as one group of copies.
  const auto copy_chunk = [&](int64_t k0, int64_t c, int buf) {
    stage_tile<kQueries>(async, Ths + buf * kThetaTile, kLdTheta, theta, a.dim, n, c * kChunk, kChunk, q0);
    stage_tile<kTileKeys>(async, Phs + buf * kPhiTile, kPitchKey, phi, a.dim, n, c * kChunk, kChunk, k0);
    cp_async_commit();
  };

  float o[kOutTiles][4] = {};
  float m[2] = {mn::neg_inf<float>(), mn::neg_inf<float>()}, l[2] = {0.f, 0.f};  // rows g, g + 8
  int buf = 0;
  if (chunks > 0) copy_chunk(0, 0, 0);
  for (int64_t k0 = 0; k0 < n; k0 += kTileKeys) {
    stage_tile<kTileKeys>(async, Gs, kPitchKey, values, channels, n, 0, out_tiles * kColTile, k0);
    cp_async_commit();
    float s[kKeyTiles][4] = {};
    reduce_chunks(chunks, k0, k0 + kTileKeys, k0 + kTileKeys < n, buf, copy_chunk, [&](int64_t, int at) {
#pragma unroll
      for (int kk = 0; kk < kChunk; kk += kDepth)
        accumulate_logits<kKeyTiles>(s, Ths + at * kThetaTile, kLdTheta, row0, Phs + at * kPhiTile, kPitchKey, kk);
    });

    // Online softmax of rows g (h = 0) and g + 8 (h = 1) over this tile: 8 keys a lane.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = mn::neg_inf<float>();
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t key = k0 + j * kColTile + 2 * t + e;
          float& x = s[j][2 * h + e];
          x = key < n ? a.scale * x : mn::neg_inf<float>();
          tile_max = mn::RowMax{}(tile_max, x);
        }
      tile_max = mn::RowMax{}(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = mn::RowMax{}(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float m_new = mn::RowMax{}(m[h], tile_max);
      const float alpha = mn::rescale(m[h], m_new);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[j][2 * h + e];
          x = mn::shifted_weight(x, m_new);
          sum += x;
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[h] = l[h] * alpha + sum;
      m[h] = m_new;
#pragma unroll
      for (int f = 0; f < kOutTiles; ++f) {
        o[f][2 * h] *= alpha;
        o[f][2 * h + 1] *= alpha;
      }
    }

    accumulate_output<scalar_t>(o, s, Gs, kPitchKey, out_tiles);  // O += P g^T
    __syncthreads();  // before the next tile restages g, theta and phi
  }

  if (t == 0 && blockIdx.y == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = q0 + row0 + g + 8 * h;
      if (i < n) a.lse[b * n + i] = mn::row_lse(m[h], l[h]);
    }
  }
  const float inv[2] = {1.f / l[0], 1.f / l[1]};
  FR_GLOBAL(scalar_t) out = a.out + (b * a.channels + c_first) * n;
  store_output<kWidth, kYPart>(o, inv, Gs, out, channels, n, q0);
#else
  __trap();  // compiled for a GPU without bf16 tensor cores: the host never launches it there
#endif
}

// fp16 / bf16 run on tensor cores wherever the device has them; fp32 only where the caller
// allows tf32 (the products then round their inputs to 10-bit mantissas). The tf32 forward's
// logits are tf32 products, as the backward's are, so its lse is what the backward's logits sum
// to one against (the SIMT forward's lse of exact fp32 logits was not: errors of up to 3x fp16's
// where that mix was tried).
template <typename scalar_t>
constexpr bool kHasTensorCorePath =
    std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, float>;

struct TensorCores {
  bool usable = false;  // the device has them and the compiled code has the kernels' bodies
  bool tf32 = false;    // fp32 may run as tf32 (tensor_cores_for, nlm_dispatch.h)
};

template <typename scalar_t>
bool use_tensor_cores(const TensorCores& tc) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return tc.usable && tc.tf32;
  } else {
    return kHasTensorCorePath<scalar_t> && tc.usable;
  }
}

// Whether the forward holds the logits plane (forward_planes, nlm_dispatch.h): the SIMT forward
// above kOutWidth channels; the tensor-core forward never.
template <typename scalar_t>
bool forward_uses_planes(const TensorCores& tc, int64_t channels) {
  return !use_tensor_cores<scalar_t>(tc) && channels > kOutWidth;
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
