#pragma once
// Per-element and per-row maths of the PGD engine's fused ops, shared by the CPU kernels
// and the CUDA kernels (csrc/cpu/pgd_kernel.cpp, csrc/cuda/pgd_kernels.cuh). Everything is
// computed in the accumulation type `acc` (float, or double for double tensors).
// The reference with the same formulas is fastrobust/reference/pgd_step.py.
#include <cmath>
#include <cstdint>

#include "../common/macros.h"
#include "philox.h"

namespace fastrobust {
namespace pgd {

enum class Norm : int { Linf = 0, L2 = 1 };
// Which point a row keeps (pgd_update_best_): see better().
enum class BestMode : int { Loss = 0, FirstSuccess = 1, LastSuccess = 2 };

// eps, alpha and eta: finite and >= 0 (NaN fails both comparisons).
template <typename acc>
FR_HOST_DEVICE bool valid_row_param(acc v) {
  return v >= acc(0) && v - v == acc(0);
}

// Added to L2 norms before dividing by them (AutoAttack's constant).
constexpr double kL2Tiny = 1e-12;

template <typename acc>
FR_HOST_DEVICE acc sign(acc g) {
  return acc(g > acc(0)) - acc(g < acc(0));
}

template <typename acc>
FR_HOST_DEVICE acc clamp(acc v, acc lo, acc hi) {
  // max then min, as torch.clamp: a NaN stays NaN.
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// max(v, b) then min(., c) that propagate a NaN from any of the three (torch.maximum and
// torch.minimum do): the eps-box around a NaN x0 has NaN bounds, and the element stays NaN.
template <typename acc>
FR_HOST_DEVICE acc clamp_nan(acc v, acc lo, acc hi) {
  v = (v < lo || lo != lo) ? lo : v;
  return (v > hi || hi != hi) ? hi : v;
}

// L-inf projection of x_new onto the eps-box around x0, then onto [lo, hi].
template <typename acc>
FR_HOST_DEVICE acc project_linf(acc x_new, acc x0, acc eps, acc lo, acc hi) {
  return clamp(clamp_nan(x_new, x0 - eps, x0 + eps), lo, hi);
}

// Factor that brings a delta with sum of squares `sum_sq` into the L2 eps-ball: min(1, eps/norm), written
// so that norm = 0 and eps = 0 stay finite.
template <typename acc>
FR_HOST_DEVICE acc l2_shrink(acc sum_sq, acc eps) {
  const acc norm = std::sqrt(sum_sq);
  return norm > eps ? eps / norm : acc(1);
}

// Denominator of an L2 step direction g / (||g|| + 1e-12), from sum(g^2).
template <typename acc>
FR_HOST_DEVICE acc l2_denominator(acc sum_sq) {
  return std::sqrt(sum_sq) + acc(kL2Tiny);
}

// A step length with its direction of travel: -alpha for descent (x - alpha*dir and
// x + (-alpha)*dir round identically).
template <typename acc>
FR_HOST_DEVICE acc signed_step(acc alpha, bool descent) {
  return descent ? -alpha : alpha;
}

// One PGD element before any projection: x + step * dir + noise, where dir is sign(g)
// (L-inf) or g / gdenom (L2; gdenom from l2_denominator).
template <typename acc, Norm norm>
FR_HOST_DEVICE acc raw_step(acc x, acc g, acc step, acc gdenom, acc noise) {
  const acc dir = norm == Norm::Linf ? sign(g) : g / gdenom;
  return x + step * dir + noise;
}

// L2 projection of one element (shrink from l2_shrink of its row's delta), then the box clip.
template <typename acc>
FR_HOST_DEVICE acc project_l2(acc x_new, acc x0, acc shrink, acc lo, acc hi) {
  return clamp(x0 + (x_new - x0) * shrink, lo, hi);
}

// APGD's two-point update before its projection: x + a (z - x) + (1 - a)(x - x_prev).
template <typename acc>
FR_HOST_DEVICE acc momentum_mix(acc x, acc z, acc x_prev, acc a) {
  return x + a * (z - x) + (acc(1) - a) * (x - x_prev);
}

// Random starts (pgd_random_init_). Element i (flat index in memory) draws word i of the
// Philox stream (seed, offset); the L2 radius of row r draws word r of the stream
// (seed, offset ^ kRadiusStream), so the two never share numbers.
constexpr uint64_t kRadiusStream = uint64_t(1) << 63;

// L-inf: x0 + eps * (2u - 1), u ~ U[0, 1), then the box clip.
template <typename acc>
FR_HOST_DEVICE acc linf_start(acc x0, acc eps, float u, acc lo, acc hi) {
  return clamp(x0 + eps * (acc(2) * acc(u) - acc(1)), lo, hi);
}

// L2: the radius eps * u^(1/d) of a point uniform in the d-dimensional ball.
template <typename acc>
FR_HOST_DEVICE acc l2_start_radius(acc eps, float u, int64_t d) {
  return eps * std::pow(acc(u), acc(1) / acc(d));
}

// Whether a row's new point (loss, is_adv) replaces the kept one (best_loss, success).
//   Loss:         strictly higher loss;
//   FirstSuccess: the first successful point is kept for good; until then, higher loss;
//   LastSuccess:  every successful point replaces the kept one; until the first, higher loss.
// A point with a non-finite loss (NaN, +-inf) is never taken, whatever is_adv says: a model
// whose output is not finite there has shown nothing (usable_point).
template <typename acc>
FR_HOST_DEVICE bool usable_point(acc loss) {
  return loss - loss == acc(0);
}

template <typename acc>
FR_HOST_DEVICE bool better(BestMode mode, acc loss, bool is_adv, acc best_loss, bool success) {
  if (!usable_point(loss)) return false;
  const bool higher = loss > best_loss;
  switch (mode) {
    case BestMode::FirstSuccess: return !success && (is_adv || higher);
    case BestMode::LastSuccess: return is_adv || (!success && higher);
    default: return higher;
  }
}

// Raw arguments of the row ops (pgd_step_, pgd_random_init_, apgd_step_); pointers that an
// op does not use are null. eps/alpha hold one value (stride 0) or one per row (stride 1);
// alpha is APGD's eta.
template <typename scalar_t, typename acc>
struct RowPtrs {
  scalar_t* x;
  scalar_t* x_prev;
  const scalar_t* x0;
  const scalar_t* grad;
  const scalar_t* noise;
  const acc* eps;
  int64_t eps_stride;
  const acc* alpha;
  int64_t alpha_stride;
  const bool* active;
  int64_t rows, row_size;
  acc lo, hi;
  bool descent;
  acc momentum;
  uint64_t seed, offset;

  FR_HOST_DEVICE acc eps_of(int64_t row) const { return eps[row * eps_stride]; }
  FR_HOST_DEVICE acc alpha_of(int64_t row) const { return alpha[row * alpha_stride]; }
  FR_HOST_DEVICE bool is_active(int64_t row) const { return active == nullptr || active[row]; }
};

// success |= is_adv for usable points; nonfinite (null when not asked for) |= !usable_point.
template <typename scalar_t, typename acc>
struct BestPtrs {
  scalar_t* best_x;
  acc* best_loss;
  bool* success;
  bool* nonfinite;
  const scalar_t* x;
  const acc* loss;
  const bool* is_adv;
  int64_t rows, row_size;
  BestMode mode;
};

}  // namespace pgd
}  // namespace fastrobust
