#pragma once
// Sparta device code: fused forward and backward kernels and their launchers.
// Free of CUDA runtime and torch headers, so that it compiles under nvcc and, through
// csrc/emu/cuda_emu.h, under g++ for the CPU emulator.
//
// Work decomposition (both kernels): a block owns one channel c, a spatial tile of
// tile_h x tile_w outputs, and `planes` consecutive images of the batch. Grouping images
// of one channel lets a block share the channel's weights and reduce the weight/bias
// gradients of all its planes to one partial sum per tap (summed over the blocks by a second
// kernel in a fixed order, sparta_wgrad_kernels.cuh: the gradients are deterministic). Small planes (the 4x4 and
// 8x8 maps of late ResNet stages) are packed many to a block so the threads stay busy.
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../common/dispatch.h"
#include "../kernels/sparta.h"
#include "sparta_wgrad_kernels.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace sparta {

constexpr int kThreads = 256;
constexpr int kTileElems = 512;               // outputs per block, before packing planes
constexpr size_t kSmemBudget = 40 * 1024;     // stays under the 48 KiB default limit

struct Geometry {
  int64_t batch, channels, height, width;
};

struct LaunchConfig {
  int tile_h, tile_w, planes, tiles_w;
  dim3 grid, block;
  size_t smem_bytes;
};

// The smallest stride >= at_least that is `residue` modulo the 32 shared-memory banks.
FR_HOST_DEVICE int bank_stride(int at_least, int residue) {
  return at_least + ((residue - at_least) % kWarpSize + kWarpSize) % kWarpSize;
}

// The smallest row pitch >= at_least for windows walked by rows tile_w wide (below): an odd
// multiple of tile_w modulo 32 where tile_w divides 32 (then r * pitch runs over distinct
// multiples of tile_w for the rows r of a warp), tile_w modulo 32 otherwise.
FR_HOST_DEVICE int row_pitch(int at_least, int tile_w) {
  const int m = kWarpSize % tile_w == 0 ? 2 * tile_w : kWarpSize;
  return at_least + ((tile_w - at_least) % m + m) % m;
}

// Shared-memory layout of one plane's haloed window (rows x cols of it used): rows `pitch`
// elements apart, planes `plane` elements apart. The threads of a block walk a tile's outputs
// row-major (tile_w a row, tile_h * tile_w a plane) and read the window around each output.
// With that pitch and plane = tile_h * tile_w modulo 32, the 32 lanes of a warp read 32
// different banks under every tap (conflict-free; the cost model's bank_conflict_factor
// then comes from the window loads, whose rows are wider than the tile's). A tile 32 wide
// puts one row in a warp, where any pitch does.
struct Window {
  int rows, cols, pitch, plane;
};

FR_HOST_DEVICE Window make_window(int rows, int cols, int tile_h, int tile_w) {
  if (tile_w % kWarpSize == 0) return Window{rows, cols, cols, rows * cols};
  const int pitch = row_pitch(cols, tile_w);
  return Window{rows, cols, pitch, bank_stride(rows * pitch, (tile_h * tile_w) % kWarpSize)};
}

// forward: x with a halo of R.  backward: x with a halo of 2R, dL/dz with a halo of R, and
// the direct part of dL/dx on the tile itself (row-major, as the threads walk it).
FR_HOST_DEVICE Window forward_x_window(int th, int tw, int r) { return make_window(th + 2 * r, tw + 2 * r, th, tw); }
FR_HOST_DEVICE Window backward_x_window(int th, int tw, int r) { return make_window(th + 4 * r, tw + 4 * r, th, tw); }
FR_HOST_DEVICE Window backward_z_window(int th, int tw, int r) { return make_window(th + 2 * r, tw + 2 * r, th, tw); }

// Shared-memory elements (in the accumulation type) one plane's tile needs.
inline size_t smem_elems_per_plane(bool backward, int th, int tw, int r) {
  if (!backward) return size_t(forward_x_window(th, tw, r).plane);
  return size_t(backward_x_window(th, tw, r).plane) + size_t(backward_z_window(th, tw, r).plane) + size_t(th) * tw;
}

inline LaunchConfig make_config(const Geometry& g, int k, size_t acc_bytes, bool backward) {
  const int r = k / 2;
  LaunchConfig cfg{};
  cfg.tile_w = static_cast<int>(std::min<int64_t>(g.width, 32));
  cfg.tile_h = static_cast<int>(std::min<int64_t>(g.height, std::max(1, kTileElems / cfg.tile_w)));
  // Narrow, tall planes: a tile of kTileElems outputs plus its halo can exceed the budget on
  // its own (float64, k = 7, W <= 2 at H >= ~400): shorter tiles then.
  auto plane_bytes = [&](int th) { return smem_elems_per_plane(backward, th, cfg.tile_w, r) * acc_bytes; };
  while (cfg.tile_h > 1 && plane_bytes(cfg.tile_h) > kSmemBudget) --cfg.tile_h;
  TORCH_CHECK(plane_bytes(cfg.tile_h) <= kSmemBudget, "sparta: kernel size ", k,
              " needs more shared memory than a block has");
  const int tile = cfg.tile_h * cfg.tile_w;
  cfg.planes = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(g.batch, kTileElems / tile)));
  while (cfg.planes > 1 &&
         cfg.planes * smem_elems_per_plane(backward, cfg.tile_h, cfg.tile_w, r) * acc_bytes >
             kSmemBudget)
    --cfg.planes;
  cfg.smem_bytes = cfg.planes * smem_elems_per_plane(backward, cfg.tile_h, cfg.tile_w, r) * acc_bytes;
  cfg.tiles_w = static_cast<int>(ceil_div<int64_t>(g.width, cfg.tile_w));
  const int64_t tiles = ceil_div<int64_t>(g.height, cfg.tile_h) * cfg.tiles_w;
  const int64_t plane_groups = ceil_div<int64_t>(g.batch, cfg.planes);
  TORCH_CHECK(g.channels <= 65535, "x: at most 65535 channels are supported, got ", g.channels);
  TORCH_CHECK(plane_groups <= 65535 && tiles <= INT32_MAX, "x: shape too large for one launch");
  cfg.grid = dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(g.channels),
                  static_cast<unsigned>(plane_groups));
  cfg.block = dim3(kThreads);
  return cfg;
}

// Loads a thread issues before it stores any of them to shared memory. Staging is a few
// elements a thread; a loop that loads, converts and stores one element at a time keeps one
// load of each thread in flight, far too few to cover DRAM latency at a block's occupancy.
constexpr int kLoadsInFlight = 4;

// For i = threadIdx.x, threadIdx.x + blockDim.x, ... < n: fetch(i, at) returns element i's
// value and sets `at` to its place in `dst`. kLoadsInFlight fetches, then their stores.
template <typename acc, typename Fetch>
__device__ __forceinline__ void stage(smem_ptr<acc> dst, int n, Fetch fetch) {
  const int threads = static_cast<int>(blockDim.x);
  for (int base = static_cast<int>(threadIdx.x); base < n; base += kLoadsInFlight * threads) {
    acc v[kLoadsInFlight];
    int at[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int i = base + u * threads;
      v[u] = acc(0);
      at[u] = -1;
      if (i < n) v[u] = fetch(i, at[u]);
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (at[u] >= 0) dst[at[u]] = v[u];
  }
}

// A window of `rows` rows of mid + 2 * halo columns per plane, walked in two parts so that a
// warp takes a row of the tile's own columns at a time: middle_cell(i) is the i-th cell of its
// middle columns (planes * rows * mid of them, row-major), side_cell(i) the i-th of its
// 2 * halo side columns (planes * rows * 2 * halo): the walk of the x windows' loads and of
// the backward's dL/dz window.
struct Cell {
  int p, r, q;  // plane, window row, window column
};

__device__ __forceinline__ Cell middle_cell(int i, int rows, int mid, int halo) {
  const int p = i / (rows * mid);
  const int rem = i - p * rows * mid;
  return {p, rem / mid, halo + rem % mid};
}

__device__ __forceinline__ Cell side_cell(int i, int rows, int mid, int halo) {
  const int side = 2 * halo;
  const int p = i / (rows * side);
  const int rem = i - p * rows * side;
  const int j = rem % side;
  return {p, rem / side, j < halo ? j : mid + j};
}

// Copies `planes` haloed windows of x (rows h0-halo .., cols w0-halo ..) into shared memory
// laid out as `win`, converted to the accumulation type, with zeros outside the image (the
// conv's padding). The window's middle columns (the tile's own, cols - 2 * halo of them) are
// walked a row at a time and its 2 * halo side columns after them: a tile 32 wide then puts
// one image row under a warp, whole 32-byte sectors, where a walk over the whole window rows
// put pieces of two rows and the halo under each warp (half of a bf16 warp's sectors wasted).
template <typename acc, typename GlobalPointer>
__device__ __forceinline__ void load_window(smem_ptr<acc> dst, const Window& win, int halo, GlobalPointer x,
                                            int64_t plane0, int64_t plane_stride, int planes,
                                            int H, int W, int h0, int w0) {
  auto load = [&](Cell cell, int& at) {
    const int h = h0 + cell.r, w = w0 + cell.q;
    at = cell.p * win.plane + cell.r * win.pitch + cell.q;
    acc v = acc(0);
    if (h >= 0 && h < H && w >= 0 && w < W)
      v = static_cast<acc>(x[plane0 + cell.p * plane_stride + int64_t(h) * W + w]);
    return v;
  };
  const int mid = win.cols - 2 * halo;
  stage(dst, planes * win.rows * mid,
        [&](int i, int& at) { return load(middle_cell(i, win.rows, mid, halo), at); });
  stage(dst, planes * win.rows * 2 * halo,
        [&](int i, int& at) { return load(side_cell(i, win.rows, mid, halo), at); });
}

// Whole-plane tiles (the tile is the plane: the 4x4 to 16x16 maps of late ResNet stages):
// every halo cell lies outside the image, so a window is the plane framed by zeros. The
// frames are zeroed over the windows' contiguous span (consecutive words: no bank
// conflicts), and after a barrier the planes are written in the tile walk, for which the
// window layout is conflict-free. (A dense walk over the window rows instead straddles
// planes and meets up to 2-3 words per bank at 4x4.)
template <typename acc>
__device__ __forceinline__ void zero_span(smem_ptr<acc> dst, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = acc(0);
}

template <typename acc, typename GlobalPointer>
__device__ __forceinline__ void load_plane_interiors(smem_ptr<acc> dst, const Window& win, int halo,
                                                     GlobalPointer x, int64_t plane0,
                                                     int64_t plane_stride, int planes, int H, int W) {
  const int per_plane = H * W;
  stage(dst, planes * per_plane, [&](int i, int& at) {
    const int p = i / per_plane;
    const int rem = i - p * per_plane;
    const int r = rem / W, q = rem - r * W;
    at = p * win.plane + (r + halo) * win.pitch + (q + halo);
    return static_cast<acc>(x[plane0 + p * plane_stride + rem]);
  });
}

// The channel's K*K weights and its bias, staged once per block in shared memory by its first
// K*K + 1 threads, then read by every thread after the caller's next __syncthreads() (a
// broadcast, conflict-free). Read from global memory by every warp instead, each tap was a
// warp access using 4 (fp32) or 2 (bf16) bytes of a 32-byte sector: most of the kernels'
// wasted sector traffic at the small maps, where a thread has only two or three outputs.
template <int K, typename acc, typename SharedPointer, typename GlobalPointer>
__device__ __forceinline__ void stage_taps(SharedPointer taps, GlobalPointer weight,
                                           GlobalPointer bias, int64_t c) {
  static_assert(K * K + 1 <= kThreads, "one thread per tap and one for the bias");
  const int t = static_cast<int>(threadIdx.x);
  if (t < K * K)
    taps[t] = static_cast<acc>(weight[c * K * K + t]);
  else if (t == K * K)
    taps[t] = static_cast<acc>(bias[c]);
}

template <int K, typename acc, typename SharedPointer>
__device__ __forceinline__ void read_taps(SharedPointer taps, acc (&wk)[K * K], acc& bc) {
#pragma unroll
  for (int t = 0; t < K * K; ++t) wk[t] = static_cast<acc>(taps[t]);
  bc = static_cast<acc>(taps[K * K]);
}

// What a block works on: channel c, images b0 .. b0+np-1 (the last group may be short), and
// the tile whose top-left output is (h0, w0).
struct BlockTile {
  int64_t c, plane0, plane_stride;  // plane0: offset of plane (b0, c); plane_stride: C*H*W
  int np, h0, w0;
};

__device__ __forceinline__ BlockTile block_tile(int64_t B, int64_t C, int H, int W, int tile_h,
                                                int tile_w, int planes, int tiles_w) {
  BlockTile t;
  t.c = blockIdx.y;
  const int64_t b0 = int64_t(blockIdx.z) * planes;
  t.np = B - b0 < planes ? static_cast<int>(B - b0) : planes;
  t.h0 = (blockIdx.x / tiles_w) * tile_h;
  t.w0 = (blockIdx.x % tiles_w) * tile_w;
  t.plane_stride = C * H * W;
  t.plane0 = (b0 * C + t.c) * H * W;
  return t;
}

template <typename scalar_t, int K>
__global__ void __launch_bounds__(kThreads)
sparta_forward_kernel(FR_GLOBAL_RESTRICT(const scalar_t) x, FR_GLOBAL_RESTRICT(const scalar_t) weight,
                      FR_GLOBAL_RESTRICT(const scalar_t) bias, FR_GLOBAL_RESTRICT(scalar_t) y, int64_t B,
                      int64_t C, int H, int W, int tile_h, int tile_w, int planes, int tiles_w) {
  using acc = acc_t<scalar_t>;
  constexpr int R = K / 2;
  FR_DYNAMIC_SMEM(acc, xs);
  FR_SHARED(acc, taps, K * K + 1);
  const BlockTile bt = block_tile(B, C, H, W, tile_h, tile_w, planes, tiles_w);
  const int64_t c = bt.c, plane0 = bt.plane0, plane_stride = bt.plane_stride;
  const int np = bt.np, h0 = bt.h0, w0 = bt.w0;
  const Window xw = forward_x_window(tile_h, tile_w, R);
  const int sw = xw.pitch;
  stage_taps<K, acc>(taps, weight, bias, c);

  const bool whole_plane = tile_h == H && tile_w == W;  // uniform over the launch
  if (whole_plane) {
    zero_span(xs, np * xw.plane);
    __syncthreads();
    load_plane_interiors(xs, xw, R, x, plane0, plane_stride, np, H, W);
  } else {
    load_window(xs, xw, R, x, plane0, plane_stride, np, H, W, h0 - R, w0 - R);
  }
  __syncthreads();
  // The K*K weights go to registers after the staging, so that they do not hold registers
  // through it (at K = 7 in fp16 they made ptxas spill).
  acc wk[K * K], bc;
  read_taps<K>(taps, wk, bc);

  const int n = np * tile_h * tile_w;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int p = i / (tile_h * tile_w);
    const int rem = i - p * tile_h * tile_w;
    const int th = rem / tile_w, tw = rem % tile_w;
    const int h = h0 + th, w = w0 + tw;
    if (h >= H || w >= W) continue;
    const smem_ptr<acc> win = xs + p * xw.plane + th * sw + tw;  // top-left tap of this output
    acc z = bc;
#pragma unroll
    for (int i2 = 0; i2 < K; ++i2)
#pragma unroll
      for (int j2 = 0; j2 < K; ++j2) z += wk[i2 * K + j2] * win[i2 * sw + j2];
    FR_COUNT_FMA(K * K);
    const acc xv = win[R * sw + R];
    y[plane0 + p * plane_stride + int64_t(h) * W + w] =
        static_cast<scalar_t>(fastrobust::sparta::forward(xv, z));
  }
}

// Fused backward: recomputes the gate from x, forms dL/dz on the tile plus a halo of R,
// then writes dL/dx (direct + transposed conv) and this block's sums of dL/dw and dL/db into
// its row of `partials` (a channel's rows from c * partials_stride on: K*K + 1 words a block,
// taps then the bias, stored together, a few sectors rather than one a word), which
// reduce_partials_kernel sums in a fixed order: deterministic, unlike one atomic per tap.
template <typename scalar_t, int K>
__global__ void __launch_bounds__(kThreads)
sparta_backward_kernel(FR_GLOBAL_RESTRICT(const scalar_t) grad_y, FR_GLOBAL_RESTRICT(const scalar_t) x,
                       FR_GLOBAL_RESTRICT(const scalar_t) weight, FR_GLOBAL_RESTRICT(const scalar_t) bias,
                       FR_GLOBAL_RESTRICT(scalar_t) grad_x, FR_GLOBAL_RESTRICT(acc_t<scalar_t>) partials,
                       int64_t B, int64_t C, int H, int W, int tile_h, int tile_w, int planes, int tiles_w) {
  using acc = acc_t<scalar_t>;
  constexpr int R = K / 2;
  constexpr int kTaps = K * K + 1;  // weight taps, then the bias
  FR_DYNAMIC_SMEM(acc, smem);
  const BlockTile bt = block_tile(B, C, H, W, tile_h, tile_w, planes, tiles_w);
  const int64_t c = bt.c, plane0 = bt.plane0, plane_stride = bt.plane_stride;
  const int np = bt.np, h0 = bt.h0, w0 = bt.w0;
  const Window xwin = backward_x_window(tile_h, tile_w, R);  // x, origin (h0-2R, w0-2R)
  const Window zwin = backward_z_window(tile_h, tile_w, R);  // dL/dz, origin (h0-R, w0-R)
  const int xw = xwin.pitch, zw = zwin.pitch, zh = zwin.rows;
  const smem_ptr<acc> xs = smem;
  const smem_ptr<acc> gzs = xs + planes * xwin.plane;
  const smem_ptr<acc> gxs = gzs + planes * zwin.plane;  // direct part of dL/dx on the tile
  FR_SHARED(acc, taps, K * K + 1);
  FR_SHARED(acc, tap_sums, kTaps);  // this block's row of partials, stored together at the end
  stage_taps<K, acc>(taps, weight, bias, c);

  const bool whole_plane = tile_h == H && tile_w == W;  // uniform over the launch
  if (whole_plane) {
    zero_span(xs, np * xwin.plane);
    zero_span(gzs, np * zwin.plane);  // dL/dz's frame: no output exists there
    __syncthreads();
    load_plane_interiors(xs, xwin, 2 * R, x, plane0, plane_stride, np, H, W);
  } else {
    load_window(xs, xwin, 2 * R, x, plane0, plane_stride, np, H, W, h0 - 2 * R, w0 - 2 * R);
  }
  __syncthreads();
  acc wk[K * K], bc;
  read_taps<K>(taps, wk, bc);

  // dL/dz on the tile and its halo; zero outside the image, where no output exists.
  auto z_grad = [&](int p, int r, int q) {
    const int h = h0 - R + r, w = w0 - R + q;
    acc gz = acc(0);
    if (h >= 0 && h < H && w >= 0 && w < W) {
      const smem_ptr<acc> win = xs + p * xwin.plane + r * xw + q;
      acc z = bc;
#pragma unroll
      for (int i2 = 0; i2 < K; ++i2)
#pragma unroll
        for (int j2 = 0; j2 < K; ++j2) z += wk[i2 * K + j2] * win[i2 * xw + j2];
      FR_COUNT_FMA(K * K);
      const acc gy = static_cast<acc>(grad_y[plane0 + p * plane_stride + int64_t(h) * W + w]);
      const auto g = fastrobust::sparta::backward(acc(win[R * xw + R]), z, gy);
      gz = g.dz;
      const int th = r - R, tw = q - R;
      if (th >= 0 && th < tile_h && tw >= 0 && tw < tile_w)
        gxs[(p * tile_h + th) * tile_w + tw] = g.dx;
    }
    gzs[p * zwin.plane + r * zw + q] = gz;
  };
  if (whole_plane) {
    // Only the plane itself: its frame is zero already. The tile walk, conflict-free.
    for (int i = threadIdx.x; i < np * tile_h * tile_w; i += blockDim.x) {
      const int p = i / (tile_h * tile_w);
      const int rem = i - p * tile_h * tile_w;
      z_grad(p, rem / tile_w + R, rem % tile_w + R);
    }
  } else {
    // The window in two parts, so that the warps walk rows tile_w wide as in the loops below
    // (the layout is conflict-free for that walk): the tile's own columns (grad_y read a row
    // of the tile at a time: whole sectors), then the R columns on either side.
    for (int i = threadIdx.x; i < np * zh * tile_w; i += blockDim.x) {
      const Cell cell = middle_cell(i, zh, tile_w, R);
      z_grad(cell.p, cell.r, cell.q);
    }
    for (int i = threadIdx.x; i < np * zh * 2 * R; i += blockDim.x) {
      const Cell cell = side_cell(i, zh, tile_w, R);
      z_grad(cell.p, cell.r, cell.q);
    }
  }
  __syncthreads();

  // dL/dx = direct + transposed depthwise conv of dL/dz.
  for (int i = threadIdx.x; i < np * tile_h * tile_w; i += blockDim.x) {
    const int p = i / (tile_h * tile_w);
    const int rem = i - p * tile_h * tile_w;
    const int th = rem / tile_w, tw = rem % tile_w;
    const int h = h0 + th, w = w0 + tw;
    if (h >= H || w >= W) continue;
    // x[h] feeds z[h + R - i2] through tap i2; in the dL/dz window that row is th + 2R - i2.
    const smem_ptr<acc> win = gzs + p * zwin.plane + (th + 2 * R) * zw + (tw + 2 * R);
    acc gx = gxs[i];
#pragma unroll
    for (int i2 = 0; i2 < K; ++i2)
#pragma unroll
      for (int j2 = 0; j2 < K; ++j2) gx += wk[i2 * K + j2] * win[-i2 * zw - j2];
    FR_COUNT_FMA(K * K);
    grad_x[plane0 + p * plane_stride + int64_t(h) * W + w] = static_cast<scalar_t>(gx);
  }

  // dL/dw[t] = sum over this block's outputs of dL/dz * (x under tap t); dL/db = sum dL/dz.
  // One warp per tap; outputs past the image edge have dL/dz = 0 and add nothing.
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  const int n = np * tile_h * tile_w;
  for (int t = warp; t < kTaps; t += nwarps) {
    const int ti = t / K, tj = t % K;
    acc sum = acc(0);
    for (int i = lane; i < n; i += kWarpSize) {
      const int p = i / (tile_h * tile_w);
      const int rem = i - p * tile_h * tile_w;
      const int th = rem / tile_w, tw = rem % tile_w;
      const acc gz = gzs[p * zwin.plane + (th + R) * zw + (tw + R)];
      sum += t < K * K ? gz * xs[p * xwin.plane + (th + R + ti) * xw + (tw + R + tj)] : gz;
    }
    FR_COUNT_FMA(t < K * K && n > lane ? (n - lane + kWarpSize - 1) / kWarpSize : 0);
    sum = warp_sum(sum);
    if (lane == 0) tap_sums[t] = sum;
    // Reconverge after lane 0's store (independent thread scheduling does not promise it), so
    // that the next tap's loads are issued by the whole warp together.
    __syncwarp();
  }
  __syncthreads();
  if (threadIdx.x < kTaps) {
    const int64_t block_in_channel = int64_t(blockIdx.z) * gridDim.x + blockIdx.x;
    const int64_t blocks_per_channel = int64_t(gridDim.x) * gridDim.z;
    partials[c * partials_stride(blocks_per_channel, kTaps) + block_in_channel * kTaps + threadIdx.x] =
        acc(tap_sums[threadIdx.x]);
  }
}

// Host launchers on raw pointers (contiguous NCHW x, weight (C,1,K,K), bias (C)).
template <typename scalar_t>
void launch_forward(const scalar_t* x, const scalar_t* weight, const scalar_t* bias, scalar_t* y,
                    const Geometry& g, int k, cudaStream_t stream) {
  const LaunchConfig cfg = make_config(g, k, sizeof(acc_t<scalar_t>), /*backward=*/false);
  FR_KERNEL_SIZE_SWITCH(k, K, [&] {
    auto kernel = sparta_forward_kernel<scalar_t, K>;
    FR_LAUNCH(kernel, cfg.grid, cfg.block, cfg.smem_bytes, stream, x, weight, bias, y, g.batch,
              g.channels, static_cast<int>(g.height), static_cast<int>(g.width), cfg.tile_h,
              cfg.tile_w, cfg.planes, cfg.tiles_w);
  });
}

// Words of partial sums the backward needs per channel (its blocks per channel times the
// taps, rounded up to whole sectors).
inline int64_t backward_partials_per_channel(const Geometry& g, int k, size_t acc_bytes) {
  const LaunchConfig cfg = make_config(g, k, acc_bytes, /*backward=*/true);
  return partials_stride(int64_t(cfg.grid.x) * cfg.grid.z, k * k + 1);
}

// partials: (C, backward_partials_per_channel) scratch in the accumulation type;
// grad_w (C, 1, K, K) and grad_b (C): every element written.
template <typename scalar_t>
void launch_backward(const scalar_t* grad_y, const scalar_t* x, const scalar_t* weight,
                     const scalar_t* bias, scalar_t* grad_x, acc_t<scalar_t>* partials, scalar_t* grad_w,
                     scalar_t* grad_b, const Geometry& g, int k, cudaStream_t stream) {
  const LaunchConfig cfg = make_config(g, k, sizeof(acc_t<scalar_t>), /*backward=*/true);
  FR_KERNEL_SIZE_SWITCH(k, K, [&] {
    auto kernel = sparta_backward_kernel<scalar_t, K>;
    FR_LAUNCH(kernel, cfg.grid, cfg.block, cfg.smem_bytes, stream, grad_y, x, weight, bias,
              grad_x, partials, g.batch, g.channels, static_cast<int>(g.height),
              static_cast<int>(g.width), cfg.tile_h, cfg.tile_w, cfg.planes, cfg.tiles_w);
  });
  launch_reduce_partials<scalar_t>(partials, grad_w, grad_b, g.channels, k * k + 1,
                                   int64_t(cfg.grid.x) * cfg.grid.z, stream);
}

}  // namespace sparta
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
