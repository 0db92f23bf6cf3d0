#pragma once
// Per-output maths of the 3x3 per-channel median filter (NLM's `median` variant), shared by
// the CPU and CUDA kernels.
//
// Window: the 3x3 neighbourhood of output (h, w), positions numbered row-major,
// pos = (dy + 1) * 3 + (dx + 1) for dy, dx in {-1, 0, 1}. Padding: reflect (torch's
// 'reflect': index -1 reads 1, index n reads n - 2); along a dimension of size 1 the
// neighbour index stays 0 (replicate).
// Selection: the 5th smallest (index 4) of the nine pairs (value, position) in lexicographic
// order, so ties go to the lower window position, identically on every backend. If any of
// the nine values is NaN the output is NaN and the position is that of the first NaN (torch's
// median propagates NaN).
// Backward: grad_x[p] = sum of grad_y[o] over the outputs o within distance 1 of p whose
// selected pixel is p (the reflected pixel, not the padded cell), gathered per input pixel.
// Reference: fastrobust/reference/median.py.
#include <cstdint>

#include "../common/macros.h"

namespace fastrobust {
namespace median {

constexpr int kWindow = 9;
constexpr int kNoPosition = kWindow;  // "no NaN seen" in the selection

// The index that padded index i (in [-1, n]) reads along a dimension of size n.
template <typename I>
FR_HOST_DEVICE I reflect(I i, I n) {
  return n == 1 ? I(0) : (i < 0 ? -i : (i >= n ? I(2) * n - I(2) - i : i));
}

// Compare-exchange of two (value, position) pairs: afterwards (va, ia) <= (vb, ib) in
// lexicographic order. Branch-free, so that CPU loops over outputs vectorise: the position
// type I is the value type on the CPU (lanes of one width), int on the GPU; and the test
// (vb, ib) < (va, ia) is built from selects in I, because GCC's vectoriser rejects comparison
// results combined with | and & (the loop then stays scalar, several times slower).
template <typename T, typename I>
FR_HOST_DEVICE void sort_pair(T& va, I& ia, T& vb, I& ib) {
  const I tie_swaps = ib < ia ? I(1) : I(0);
  const bool swap = (vb < va ? I(1) : (vb == va ? tie_swaps : I(0))) != I(0);
  const T lo = swap ? vb : va, hi = swap ? va : vb;
  const I ilo = swap ? ib : ia, ihi = swap ? ia : ib;
  va = lo;
  vb = hi;
  ia = ilo;
  ib = ihi;
}

template <typename T, typename I>
struct Selected {
  T value;
  I position;  // window position 0..8 of the selected value
};

// Keeps the value and position of the first NaN: called from the last position down.
template <typename T, typename I>
FR_HOST_DEVICE void note_nan(T v, I position, T& nan_value, I& nan_position) {
  const bool is_nan = v != v;
  nan_value = is_nan ? v : nan_value;
  nan_position = is_nan ? position : nan_position;
}

// The median of the window v[0..8] (row-major positions) with the rules above. The median
// network of Paeth (Graphics Gems, "median of 9", 19 compare-exchanges) on (value, position)
// pairs: a selection network, valid for any total order, and the pairs are totally ordered
// (positions are distinct) unless a value is NaN, which is handled apart. Written out on
// scalars (no indexed array) so that it stays in registers and CPU loops vectorise.
template <typename T, typename I>
FR_HOST_DEVICE Selected<T, I> median_of_nine(const T (&v)[kWindow]) {
  T p0 = v[0], p1 = v[1], p2 = v[2], p3 = v[3], p4 = v[4], p5 = v[5], p6 = v[6], p7 = v[7], p8 = v[8];
  T nan_value = T(0);
  I nan_position = I(kNoPosition);
  note_nan(p8, I(8), nan_value, nan_position);
  note_nan(p7, I(7), nan_value, nan_position);
  note_nan(p6, I(6), nan_value, nan_position);
  note_nan(p5, I(5), nan_value, nan_position);
  note_nan(p4, I(4), nan_value, nan_position);
  note_nan(p3, I(3), nan_value, nan_position);
  note_nan(p2, I(2), nan_value, nan_position);
  note_nan(p1, I(1), nan_value, nan_position);
  note_nan(p0, I(0), nan_value, nan_position);
  I i0 = I(0), i1 = I(1), i2 = I(2), i3 = I(3), i4 = I(4), i5 = I(5), i6 = I(6), i7 = I(7), i8 = I(8);
  sort_pair(p1, i1, p2, i2);
  sort_pair(p4, i4, p5, i5);
  sort_pair(p7, i7, p8, i8);
  sort_pair(p0, i0, p1, i1);
  sort_pair(p3, i3, p4, i4);
  sort_pair(p6, i6, p7, i7);
  sort_pair(p1, i1, p2, i2);
  sort_pair(p4, i4, p5, i5);
  sort_pair(p7, i7, p8, i8);
  sort_pair(p0, i0, p3, i3);
  sort_pair(p5, i5, p8, i8);
  sort_pair(p4, i4, p7, i7);
  sort_pair(p3, i3, p6, i6);
  sort_pair(p1, i1, p4, i4);
  sort_pair(p2, i2, p5, i5);
  sort_pair(p4, i4, p7, i7);
  sort_pair(p4, i4, p2, i2);
  sort_pair(p6, i6, p4, i4);
  sort_pair(p4, i4, p2, i2);
  const bool has_nan = nan_position < I(kNoPosition);
  return {has_nan ? nan_value : p4, has_nan ? nan_position : i4};
}

// Where the pixel that output (oh, ow) selected (window position `position`) lies relative to
// the output, as a window position: (sdy + 1) * 3 + (sdx + 1) with sdy = source row - oh,
// sdx = source column - ow. It differs from `position` only at the borders (reflection).
template <typename I>
FR_HOST_DEVICE int source_offset(int position, I oh, I ow, I height, I width) {
  const I dy = I(position / 3 - 1), dx = I(position % 3 - 1);
  const int sdy = static_cast<int>(reflect(oh + dy, height) - oh);
  const int sdx = static_cast<int>(reflect(ow + dx, width) - ow);
  return (sdy + 1) * 3 + (sdx + 1);
}

// The backward's gather rule: the output at window offset e (position numbering) from input
// pixel p selected p iff its source_offset is the opposite offset, kWindow - 1 - e.
FR_HOST_DEVICE int opposite(int e) { return kWindow - 1 - e; }

// Raw arguments of the kernels: x, y, grad_y, grad_x and arg are (planes, height, width)
// contiguous, planes = B * C; arg holds window positions (uint8).
template <typename scalar_t>
struct ForwardPtrs {
  const scalar_t* x;
  scalar_t* y;
  uint8_t* arg;
  int64_t planes, height, width;
};

template <typename scalar_t>
struct BackwardPtrs {
  const scalar_t* grad_y;
  const uint8_t* arg;
  scalar_t* grad_x;
  int64_t planes, height, width;
};

}  // namespace median
}  // namespace fastrobust
