// Sparta CPU backend: planes held in vectors.
//
// Where a plane is a whole number of 16-float vectors (up to kMaxVectors: 4x4, 8x8, 4x8, 6x8,
// 2x16, ...) and its rows do not straddle vectors (W divides 16), both passes skip the block
// layout of sparta_kernel.cpp. A plane lives in M vectors of R = 16 / W rows each; what a tap
// (dh, dw) reads for output vector j is a two-vector lane permutation of the plane's vectors
// j + step and j + step + 1 (step = floor(dh / R)), with zeros where the tap falls outside the
// plane: vectors before and after the plane are zero, and lanes whose column leaves the row
// are zeroed by a bit mask (an AND, never a multiply: 0 * NaN is NaN), or, where one vector of
// the pair is always padding, read from it. The transposed conv is the same with (-dh, -dw)
// over dL/dz. No staging buffer, no zero rows, no masked copies: the planes go from the tensor
// to registers and back. In the block layout at 4x4 the staging alone (copies in and out, zero
// rows, masked copies) took about half of the forward's time. At (32, 256, 8, 8) on one thread
// (builds timed in turn, twice each) the forward is about 1.5x faster than the block layout's
// in float32 and 1.1x in bfloat16, the backward about 1.3x and 1.15x; at 4x4 as fast as the
// 16-value-plane code it replaces. Past the conv, what these planes cost is the element-wise
// maths and the loads of planes C planes apart (prefetched a few images ahead).
//
// GCC only: a lane permutation chosen at run time is GCC's __builtin_shuffle (Clang's takes
// constant indices); other compilers run these planes in the block layout.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#define FR_SPARTA_VECTOR_PLANES 1
#else
#define FR_SPARTA_VECTOR_PLANES 0
#endif

#if FR_SPARTA_VECTOR_PLANES

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../kernels/sparta.h"
#include "vectorize.h"

namespace fastrobust {
namespace sparta_vector_planes {

constexpr int kLanes = 16;
constexpr int kMaxVectors = 4;    // planes up to 64 values
constexpr int kMaxTaps = 7 * 7;   // kernels up to 7x7 (r <= 3)
// Zero vectors on each side of a plane: with R >= 1, a tap reads vectors j + step and
// j + step + 1 with -3 <= step <= 3.
constexpr int kPad = 4;
// Values per step of the element-wise maths: whole planes, at least 64 values where planes are
// smaller (GCC leaves a loop of 16 scalar).
constexpr int kChunkValues = 64;
// Images ahead whose planes are prefetched.
constexpr int64_t kPrefetchAhead = 4;

using Exp = math::PolyExp;

typedef float Vec __attribute__((vector_size(64)));
typedef int32_t Idx __attribute__((vector_size(64)));

// How one tap reads a plane held in vectors: output vector j, lane l takes lane idx[l] of the
// pair (vector j + step, vector j + step + 1), AND keep[l] where `masked` (else every lane not
// in the plane already reads a zero of the pair). A plane of one vector reads (plane, zeros)
// instead: lane lone[l], 16 for a zero. Plain ints: no over-aligned vector types in a
// std::vector.
struct Shift {
  int32_t step;
  bool masked;
  int32_t idx[kLanes], keep[kLanes], lone[kLanes];
};

// The permutations of one op call's taps, shared by all work items: `forward` for the conv
// (tap (dh, dw)), `transposed` for the transposed conv (tap (-dh, -dw)).
struct Layout {
  int64_t B, C;
  int taps, vectors;
  std::vector<Shift> forward, transposed;

  // Whether planes of H x W run here: whole vectors, at most kMaxVectors, rows within a vector,
  // float maths (double keeps the block layout), kernels up to kMaxTaps taps.
  static bool supported(int64_t H, int64_t W, int k, bool float_maths) {
    const int64_t n = H * W;
    return float_maths && n > 0 && n % kLanes == 0 && n / kLanes <= kMaxVectors &&
           kLanes % W == 0 && k * k <= kMaxTaps;
  }

  Layout(int64_t B_, int64_t C_, int64_t H, int64_t W, int k)
      : B(B_), C(C_), taps(k * k), vectors(static_cast<int>(H * W / kLanes)),
        forward(taps), transposed(taps) {
    const int r = k / 2;
    for (int t = 0; t < taps; ++t) {
      const int dh = t / k - r, dw = t % k - r;
      forward[t] = shift(dh, dw, W);
      transposed[t] = shift(-dh, -dw, W);
    }
  }

 private:
  Shift shift(int dh, int dw, int64_t W) const {
    const int R = static_cast<int>(kLanes / W);  // rows per vector
    Shift s{};
    s.step = dh >= 0 ? dh / R : -((-dh + R - 1) / R);
    const int within = dh - s.step * R;  // rows into vector j + step, 0 .. R - 1
    // Vectors j + step (j + step + 1) are padding for every j of the plane: lanes outside the
    // row can read a zero there instead of being masked.
    const bool first_zero = s.step + vectors - 1 < 0 || s.step >= vectors;
    const bool second_zero = s.step + 1 >= vectors || s.step + vectors < 0;
    const int32_t zero_lane = first_zero ? 0 : second_zero ? kLanes : -1;
    for (int l = 0; l < kLanes; ++l) {
      const int w = static_cast<int>(l % W);
      const bool inside = w + dw >= 0 && w + dw < W;
      // Lane l + within * W + dw of the pair: row (l / W + within) of vector j + step counts
      // on into vector j + step + 1; never below 0 or past 31 for lanes inside the row.
      s.idx[l] = inside ? l + within * static_cast<int>(W) + dw : std::max<int32_t>(zero_lane, 0);
      s.keep[l] = inside ? -1 : 0;
      const int row = l / static_cast<int>(W) + dh;  // in a plane of one vector
      s.lone[l] = inside && row >= 0 && row < kLanes / W ? l + dh * static_cast<int>(W) + dw : kLanes;
      if (!inside && zero_lane < 0) s.masked = true;
    }
    return s;
  }
};

// One plane of M vectors with kPad zero vectors on each side (a plane of one vector needs none:
// its taps read (plane, zeros)).
template <int M>
struct PaddedPlane {
  static constexpr int kSide = M == 1 ? 0 : kPad;
  Vec v[M + 2 * kSide];
  explicit PaddedPlane(const float* src) {
    for (int i = 0; i < kSide; ++i) v[i] = v[M + kSide + i] = Vec{};
    std::memcpy(v + kSide, src, M * sizeof(Vec));
  }
  const Vec* plane() const { return v + kSide; }
};

// The tap's permutation, loaded once per tap for all of a plane's vectors.
struct TapLanes {
  Idx idx, keep;
  template <int M>
  void load(const Shift& s) {
    if constexpr (M == 1) {
      std::memcpy(&idx, s.lone, sizeof(idx));
    } else {
      std::memcpy(&idx, s.idx, sizeof(idx));
      std::memcpy(&keep, s.keep, sizeof(keep));
    }
  }
};

// Output vector j of a tap's read of a plane.
template <int M>
inline Vec tap_read(const PaddedPlane<M>& plane, int j, const Shift& s, const TapLanes& lanes) {
  const Vec* v = plane.plane();
  if constexpr (M == 1) {
    return __builtin_shuffle(v[0], Vec{}, lanes.idx);
  } else {
    const Vec r = __builtin_shuffle(v[j + s.step], v[j + s.step + 1], lanes.idx);
    return s.masked ? reinterpret_cast<Vec>(reinterpret_cast<Idx>(r) & lanes.keep) : r;
  }
}

// out[j] += sum over taps of w[t] * (tap t's read of `plane`)[j].
template <int M>
inline void conv_plane(const PaddedPlane<M>& plane, const std::vector<Shift>& shifts, int taps,
                       const float* w, Vec* out) {
  for (int t = 0; t < taps; ++t) {
    TapLanes lanes;
    lanes.load<M>(shifts[t]);
    for (int j = 0; j < M; ++j) out[j] += w[t] * tap_read(plane, j, shifts[t], lanes);
  }
}

// A channel's taps as floats.
template <typename scalar_t>
inline void channel_weights(const scalar_t* weight, int taps, float* w) {
  for (int t = 0; t < taps; ++t) w[t] = static_cast<float>(weight[t]);
}

// Reads `planes` planes of M vectors of channel c from images b, b + 1, ... into floats (zeros
// up to `capacity` planes), or writes them back. The plane size is a compile-time constant:
// with a run-time one the conversions of 4x4 planes were loops with remainders, and both passes
// ran about 20 % slower.
template <int M, typename scalar_t>
inline void load_planes(const scalar_t* src, const Layout& L, int64_t c, int64_t b,
                        int64_t planes, int64_t capacity, float* dst) {
  constexpr int64_t n = M * kLanes;
  std::fill(dst + planes * n, dst + capacity * n, 0.0f);
  for (int64_t p = 0; p < planes; ++p) cpu::convert(src + ((b + p) * L.C + c) * n, dst + p * n, n);
  // The item's planes are C planes apart in memory, too far for the hardware prefetcher: ask
  // for those of kPrefetchAhead images on, where those images exist (no address past the
  // tensor is formed).
  if (b + capacity + kPrefetchAhead <= L.B)
    for (int64_t p = 0; p < capacity; ++p) {
      const char* next = reinterpret_cast<const char*>(src + ((b + p + kPrefetchAhead) * L.C + c) * n);
      for (int64_t byte = 0; byte < n * int64_t(sizeof(scalar_t)); byte += 64) __builtin_prefetch(next + byte);
    }
}

template <int M, typename scalar_t>
inline void store_planes(const float* src, const Layout& L, int64_t c, int64_t b, int64_t planes,
                         scalar_t* dst) {
  constexpr int64_t n = M * kLanes;
  for (int64_t p = 0; p < planes; ++p) cpu::convert(src + p * n, dst + ((b + p) * L.C + c) * n, n);
}

// Planes taken per step: kChunkValues values, or one plane where a plane is larger.
template <int M>
constexpr int64_t planes_per_chunk() {
  return std::max(1, kChunkValues / (M * kLanes));
}

// z = bias + the conv, for the kPlanes planes of a chunk.
template <int M, int64_t kPlanes>
inline void conv_planes(const float* xs, const Layout& L, const float* w, float bias, float* zs) {
  for (int64_t p = 0; p < kPlanes; ++p) {
    const PaddedPlane<M> plane(xs + p * M * kLanes);
    Vec z[M];
    for (int j = 0; j < M; ++j) z[j] = Vec{} + bias;
    conv_plane<M>(plane, L.forward, L.taps, w, z);
    std::memcpy(zs + p * M * kLanes, z, sizeof(z));
  }
}

// One forward work item: channel c, images b0 .. b0 + nb - 1. Planes past the item's end are
// zeros, not stored.
template <typename scalar_t, int M>
FR_CPU_MULTIVERSION void forward_item(const scalar_t* x, const scalar_t* weight, scalar_t bias,
                                      scalar_t* y, int64_t c, int64_t b0, int64_t nb,
                                      const Layout& L) {
  constexpr int64_t kPlanes = planes_per_chunk<M>(), kValues = kPlanes * M * kLanes;
  float w[kMaxTaps];
  channel_weights(weight + c * L.taps, L.taps, w);
  for (int64_t b = 0; b < nb; b += kPlanes) {
    const int64_t planes = std::min(kPlanes, nb - b);
    alignas(64) float xs[kValues], zs[kValues], ys[kValues];
    load_planes<M>(x, L, c, b0 + b, planes, kPlanes, xs);
    conv_planes<M, kPlanes>(xs, L, w, static_cast<float>(bias), zs);
    for (int64_t l = 0; l < kValues; ++l) ys[l] = sparta::forward<float, Exp>(xs[l], zs[l]);
    store_planes<M>(ys, L, c, b0 + b, planes, y);
  }
}

// One backward work item: dL/dx, and the item's sums of dL/dw (taps) and dL/db (last) into
// `partial`, each kept in 16 lanes over the item's planes and added up lane by lane at the end
// (a fixed order: results do not depend on the thread count). (sum_t is float wherever it runs;
// the dispatch instantiates it for double's sums too.)
template <typename scalar_t, typename sum_t, int M>
FR_CPU_MULTIVERSION void backward_item(const scalar_t* grad_y, const scalar_t* x,
                                       const scalar_t* weight, scalar_t bias, scalar_t* grad_x,
                                       sum_t* partial, int64_t c, int64_t b0, int64_t nb,
                                       const Layout& L) {
  constexpr int64_t kPlanes = planes_per_chunk<M>(), kValues = kPlanes * M * kLanes;
  float w[kMaxTaps];
  channel_weights(weight + c * L.taps, L.taps, w);
  Vec tap_sums[kMaxTaps], bias_sum{};
  for (int t = 0; t < L.taps; ++t) tap_sums[t] = Vec{};
  for (int64_t b = 0; b < nb; b += kPlanes) {
    const int64_t planes = std::min(kPlanes, nb - b);
    alignas(64) float xs[kValues], gys[kValues], zs[kValues], gzs[kValues], gxs[kValues];
    load_planes<M>(x, L, c, b0 + b, planes, kPlanes, xs);
    load_planes<M>(grad_y, L, c, b0 + b, planes, kPlanes, gys);
    conv_planes<M, kPlanes>(xs, L, w, static_cast<float>(bias), zs);
    for (int64_t l = 0; l < kValues; ++l) {
      const auto d = sparta::backward<float, Exp>(xs[l], zs[l], gys[l]);
      gxs[l] = d.dx;
      gzs[l] = d.dz;
    }
    // Only the item's planes count (a zero plane's dL/dz is not 0 where the bias is NaN).
    for (int64_t p = 0; p < planes; ++p) {
      const PaddedPlane<M> xp(xs + p * M * kLanes), gz(gzs + p * M * kLanes);
      Vec gx[M];
      std::memcpy(gx, gxs + p * M * kLanes, sizeof(gx));
      for (int j = 0; j < M; ++j) bias_sum += gz.plane()[j];
      // The weight sums and the transposed conv in one pass over the taps (as two, the 4x4
      // bf16 backward was about 10 % slower).
      for (int t = 0; t < L.taps; ++t) {
        TapLanes forward, transposed;
        forward.load<M>(L.forward[t]);
        transposed.load<M>(L.transposed[t]);
        for (int j = 0; j < M; ++j) {
          tap_sums[t] += gz.plane()[j] * tap_read(xp, j, L.forward[t], forward);
          gx[j] += w[t] * tap_read(gz, j, L.transposed[t], transposed);
        }
      }
      std::memcpy(gxs + p * M * kLanes, gx, sizeof(gx));
    }
    store_planes<M>(gxs, L, c, b0 + b, planes, grad_x);
  }
  auto total = [](const Vec& v) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += v[l];
    return s;
  };
  for (int t = 0; t < L.taps; ++t) partial[t] = static_cast<sum_t>(total(tap_sums[t]));
  partial[L.taps] = static_cast<sum_t>(total(bias_sum));
}

// Calls f with the plane's vector count as a compile-time constant.
template <typename F>
inline void with_vectors(const Layout& L, F&& f) {
  switch (L.vectors) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace sparta_vector_planes
}  // namespace fastrobust

#endif  // FR_SPARTA_VECTOR_PLANES
