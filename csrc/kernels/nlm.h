#pragma once
// Per-row maths of the softmax non-local-means op, shared by the CPU and CUDA kernels.
//
// For a query i, logits s_ij = scale * theta_i . phi_j over all keys j, p_ij = softmax_j(s_ij),
// y_i = sum_j p_ij g_j. The kernels keep, per query row, the running max m and the running
// sum l = sum_j exp(s_ij - m) over the keys seen so far (online softmax): when a new tile of
// keys raises the max to m', everything accumulated so far is rescaled by exp(m - m'). The
// row's log-sum-exp lse_i = m + log(l) is saved, and the backward recomputes
// p_ij = exp(s_ij - lse_i) tile by tile. With D_i = sum_c dy_ic y_ic (= sum_j p_ij dp_ij):
//   dp_ij = dy_i . g_j,  ds_ij = p_ij (dp_ij - D_i),
//   dtheta_i = scale sum_j ds_ij phi_j,  dphi_j = scale sum_i ds_ij theta_i,  dg_j = sum_i p_ij dy_i.
// Reference: fastrobust/reference/nlm.py (nlm_gaussian).
#include <cmath>
#include <limits>

#include "../common/macros.h"
#include "math.h"

namespace fastrobust {
namespace nlm {

template <typename acc>
FR_HOST_DEVICE acc neg_inf() {
  return -std::numeric_limits<acc>::infinity();
}

// The running row max: a max that keeps a NaN from either side (a plain a > b ? a : b drops a
// NaN depending on the order), so that a row holding a NaN logit gets a NaN max and lse.
struct RowMax {
  template <typename acc>
  FR_HOST_DEVICE acc operator()(acc a, acc b) const {
    return (a > b || a != a) ? a : b;
  }
};

// Factor that moves sums taken relative to max m_old to the new max m_new (>= m_old):
// exp(m_old - m_new), and 0 before the first key (m_old = -inf), where nothing was summed.
template <typename acc, typename Exp = math::StdExp>
FR_HOST_DEVICE acc rescale(acc m_old, acc m_new) {
  return m_old == neg_inf<acc>() ? acc(0) : Exp::exp(m_old - m_new);
}

// exp(s - m): a key's unnormalised weight relative to the row max (0 for masked keys, s = -inf).
template <typename acc, typename Exp = math::StdExp>
FR_HOST_DEVICE acc shifted_weight(acc s, acc m) {
  return s == neg_inf<acc>() ? acc(0) : Exp::exp(s - m);
}

// The row's log-sum-exp from its max and its sum of shifted weights; +-inf when the max is
// (a +inf logit, or a row of -inf logits), as torch.logsumexp, where m + log(l) would be NaN.
template <typename acc>
FR_HOST_DEVICE acc row_lse(acc m, acc l) {
  using std::log;
  return m - m == acc(0) ? m + log(l) : m;
}

// p_ij recomputed in the backward from the logit and the row's saved log-sum-exp. A row whose
// lse is not finite (a +inf logit, all -inf, a NaN) had a NaN softmax in the forward, as
// torch.softmax: its probabilities are NaN here too (exp(s - inf) alone would give 0 for the
// finite logits).
template <typename acc, typename Exp = math::StdExp>
FR_HOST_DEVICE acc probability(acc s, acc lse) {
  const acc zero_or_nan = lse - lse;
  return zero_or_nan == acc(0) ? Exp::exp(s - lse) : zero_or_nan;
}

// p_ij from the row's max m and 1 / l, l its sum of exp(s - m): normalised exactly, where
// probability's exp(s - lse) takes lse = m + log(l) rounded to the working precision (an
// absolute error of |lse| eps that moves every p of the row by the same factor: 2e-4 in fp32
// at logits of 1.5e4). A row whose lse is not finite: NaN, as probability.
template <typename acc, typename Exp = math::StdExp>
FR_HOST_DEVICE acc normalized_weight(acc s, acc m, acc inv_l, acc lse) {
  const acc zero_or_nan = lse - lse;
  return zero_or_nan == acc(0) ? shifted_weight<acc, Exp>(s, m) * inv_l : zero_or_nan;
}

// ds_ij = p_ij (dp_ij - D_i), times the logits' scale (what dtheta and dphi need).
template <typename acc>
FR_HOST_DEVICE acc scaled_logit_grad(acc p, acc dp, acc row_dot, acc scale) {
  return scale * p * (dp - row_dot);
}

}  // namespace nlm
}  // namespace fastrobust
