#pragma once
// Per-row maths of the margin losses (CW margin, DLR; untargeted and targeted), shared by
// the CPU and CUDA kernels. A row is reduced to a few statistics (the four largest logits,
// the largest logit other than one class, z_y, z_t); the loss and its gradient follow from
// them: the gradient is non-zero at five classes at most (see Terms).
// Ties between logits go to the lower class index. A row holding a NaN logit has a NaN loss and
// a NaN gradient at every class (the comparisons of the top-k would otherwise skip the NaN).
// Formulas: fastrobust/reference/margin_loss.py.
#include <cstdint>
#include <limits>

#include "../common/macros.h"

namespace fastrobust {
namespace margin {

enum class Kind : int { CW = 0, DLR = 1 };

constexpr double kDlrTiny = 1e-12;
constexpr int kNoClass = std::numeric_limits<int>::max();

// a (value va at class ia) ranks before b: larger, or equal and a lower class.
template <typename acc>
FR_HOST_DEVICE bool ranks_before(acc va, int ia, acc vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

// The largest logit and its class.
template <typename acc>
struct Top1 {
  acc v = -std::numeric_limits<acc>::infinity();
  int i = kNoClass;
  FR_HOST_DEVICE void push(acc val, int idx) {
    if (ranks_before(val, idx, v, i)) { v = val; i = idx; }
  }
};

// The four largest logits and their classes, largest first.
template <typename acc>
struct Top4 {
  acc v[4] = {-std::numeric_limits<acc>::infinity(), -std::numeric_limits<acc>::infinity(),
              -std::numeric_limits<acc>::infinity(), -std::numeric_limits<acc>::infinity()};
  int i[4] = {kNoClass, kNoClass, kNoClass, kNoClass};
  FR_HOST_DEVICE void push(acc val, int idx) {
    if (!ranks_before(val, idx, v[3], i[3])) return;
    int k = 3;
    for (; k > 0 && ranks_before(val, idx, v[k - 1], i[k - 1]); --k) {
      v[k] = v[k - 1];
      i[k] = i[k - 1];
    }
    v[k] = val;
    i[k] = idx;
  }
};

// What a row is reduced to. `other` is the largest logit of a class other than `excluded`
// (y untargeted, t for the targeted CW margin).
template <typename acc>
struct RowStats {
  Top4<acc> top;
  Top1<acc> other;
  acc z_y = 0, z_t = 0;
  int has_nan = 0;  // an int, not a bool: CUDA shuffles have no bool overload

  FR_HOST_DEVICE void push(acc val, int idx, int excluded) {
    has_nan |= val != val;
    top.push(val, idx);
    if (idx != excluded) other.push(val, idx);
  }
};

// The loss of a row and its gradient. Every loss here is a ratio L = -num/den (CW: den = 1)
// and its gradient is sparse: dL/dz_c = (A_c * den + B_c * num) / den^2, where A_c and B_c sum
// the (a, b) weights of the entries naming class c (a for d num, b for d den). Summing the
// weights before the division lets terms that cancel do so exactly: DLR is constant (1) while
// y ranks third, and its gradient there is 0, not a rounding residue whose sign would steer
// a sign-gradient step.
template <typename acc>
struct Terms {
  acc loss = 0, num = 0, den = 1;
  bool nan = false;  // the row holds a NaN: loss and every dL/dz_c are NaN
  int n = 0;
  int cls[5];
  acc a[5], b[5];
  FR_HOST_DEVICE void add(int c, acc wa, acc wb) { cls[n] = c; a[n] = wa; b[n] = wb; ++n; }
};

// dL/dz_c.
template <typename acc>
FR_HOST_DEVICE acc coefficient(const Terms<acc>& tm, int c) {
  if (tm.nan) return std::numeric_limits<acc>::quiet_NaN();
  acc wa = 0, wb = 0;
  for (int k = 0; k < tm.n; ++k)
    if (tm.cls[k] == c) { wa += tm.a[k]; wb += tm.b[k]; }
  if (wa == acc(0) && wb == acc(0)) return acc(0);
  return (wa * tm.den + wb * tm.num) / (tm.den * tm.den);
}

template <typename acc>
FR_HOST_DEVICE Terms<acc> terms(Kind kind, bool targeted, const RowStats<acc>& s, int y, int t, acc kappa) {
  Terms<acc> out;
  if (s.has_nan) {
    out.nan = true;
    out.loss = std::numeric_limits<acc>::quiet_NaN();
    return out;
  }
  if (kind == Kind::CW) {
    // untargeted: min(max_{i!=y} z_i - z_y, kappa); targeted: min(z_t - max_{i!=t} z_i, kappa)
    const acc raw = targeted ? s.z_t - s.other.v : s.other.v - s.z_y;
    out.loss = raw > kappa ? kappa : raw;  // min(raw, kappa) that keeps a NaN (inf - inf), as torch.clamp
    if (raw <= kappa) {  // clamp passes the gradient up to and at kappa, as torch.clamp
      out.add(targeted ? t : s.other.i, acc(1), acc(0));
      out.add(targeted ? s.other.i : y, acc(-1), acc(0));
    }
    return out;
  }
  // DLR: L = -N / D, so dL/dN = -1/D and dL/dD = N/D^2
  out.num = targeted ? s.z_y - s.z_t : s.z_y - s.other.v;
  out.den = targeted ? s.top.v[0] - acc(0.5) * (s.top.v[2] + s.top.v[3]) + acc(kDlrTiny)
                     : s.top.v[0] - s.top.v[2] + acc(kDlrTiny);
  out.loss = -out.num / out.den;
  out.add(y, acc(-1), acc(0));
  out.add(targeted ? t : s.other.i, acc(1), acc(0));
  out.add(s.top.i[0], acc(0), acc(1));
  if (targeted) {
    out.add(s.top.i[2], acc(0), acc(-0.5));
    out.add(s.top.i[3], acc(0), acc(-0.5));
  } else {
    out.add(s.top.i[2], acc(0), acc(-1));
  }
  return out;
}

// Raw arguments of the margin-loss kernels. targets is null for the untargeted losses.
template <typename scalar_t, typename acc>
struct MarginPtrs {
  const scalar_t* logits;
  const int64_t* labels;
  const int64_t* targets;
  const scalar_t* grad_loss;  // backward only
  scalar_t* out;              // loss (N) forward, dL/dlogits (N, C) backward
  int64_t rows, classes;
  Kind kind;
  acc kappa;

  FR_HOST_DEVICE int excluded(int64_t row) const {
    return static_cast<int>(targets != nullptr && kind == Kind::CW ? targets[row] : labels[row]);
  }
  // Labels (and targets) in [0, classes): checked on the host for CPU tensors, asserted by
  // the CUDA kernel.
  FR_HOST_DEVICE bool valid(int64_t row) const {
    return labels[row] >= 0 && labels[row] < classes &&
           (targets == nullptr || (targets[row] >= 0 && targets[row] < classes));
  }
};

}  // namespace margin
}  // namespace fastrobust
