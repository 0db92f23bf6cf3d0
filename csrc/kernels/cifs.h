#pragma once
// Per-channel maths of CIFS's fused reweighting, shared by the CPU and CUDA kernels:
//   p = softmax(r / T) over channels,  m = scale * p,  out[c, :] = feat[c, :] * m_c,
// and its backward, with d_c = sum_hw grad_out[c, hw] * feat[c, hw]:
//   grad_feat[c, :] = grad_out[c, :] * m_c (+ grad_pooled_c / HW: the gradient of the
//                     spatial mean that a CIFS layer's probe reads, when given),
//   grad_r_c = (scale / T) * p_c * (d_c - sum_c' p_c' d_c').
// Softmax as torch computes it: z = r / T, p_c = exp(z_c - max z) / sum_c' exp(z_c' - max z).
// Reference: fastrobust/reference/cifs.py.
#include <cmath>
#include <cstdint>

#include "../common/macros.h"
#include "math.h"

namespace fastrobust {
namespace cifs {

// z_c = r_c / T and exp(z_c - max z) for one channel; Exp is the exp policy of
// kernels/math.h (the vectorisable polynomial on the CPU).
template <typename acc>
FR_HOST_DEVICE acc logit(acc r, acc temperature) {
  return r / temperature;
}

template <typename acc, typename Exp = math::StdExp>
FR_HOST_DEVICE acc shifted_exp(acc r, acc temperature, acc max_z) {
  return Exp::exp(logit(r, temperature) - max_z);
}

// d loss / d r_c from the channel's p_c and d_c and the row's sum_c' p_c' d_c'.
template <typename acc>
FR_HOST_DEVICE acc relevance_grad(acc p, acc d, acc p_dot_d, acc scale, acc temperature) {
  return scale * p * (d - p_dot_d) / temperature;
}

// Raw arguments of the reweighting kernels. feat, grad_out, out, grad_feat: (B, C, HW)
// contiguous; relevance, grad_relevance and channel_dots: (B, C) in acc (channel_dots holds
// d_c, written by the first backward kernel, read by the second).
template <typename scalar_t, typename acc>
struct ReweightPtrs {
  const scalar_t* feat;
  const acc* relevance;
  const scalar_t* grad_out;
  scalar_t* out;  // forward: the output; backward: grad_feat
  acc* grad_relevance;
  acc* channel_dots;
  const acc* grad_pooled;  // (B, C) or null: grad_feat += grad_pooled / spatial
  int64_t batch, channels, spatial;
  acc temperature, scale;
};

}  // namespace cifs
}  // namespace fastrobust
