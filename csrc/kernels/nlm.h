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

// The row's log-sum-exp from its max and its sum of shifted weights.
template <typename acc>
FR_HOST_DEVICE acc row_lse(acc m, acc l) {
  using std::log;
  return m + log(l);
}

// p_ij recomputed in the backward from the logit and the row's saved log-sum-exp.
template <typename acc, typename Exp = math::StdExp>
FR_HOST_DEVICE acc probability(acc s, acc lse) {
  return Exp::exp(s - lse);
}

// ds_ij = p_ij (dp_ij - D_i), times the logits' scale (what dtheta and dphi need).
template <typename acc>
FR_HOST_DEVICE acc scaled_logit_grad(acc p, acc dp, acc row_dot, acc scale) {
  return scale * p * (dp - row_dot);
}

}  // namespace nlm
}  // namespace fastrobust
