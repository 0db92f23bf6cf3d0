// Softmax non-local means, CPU backend: blocks of queries. For each block of Q queries of
// every sample, the (B, Q, N) logit tile comes from one batched GEMM, a fused pass turns it
// into probabilities in place (row max, exp, sum, log-sum-exp), and a second GEMM applies it
// to the values. The tile is bounded by kScoreTileBytes and, unless the whole (B, N, N)
// affinity is no larger than the output (N <= C), by half of the queries: the extra memory is
// O(B * N) plus that bound, and the whole affinity is held only where it is that small. The
// backward recomputes the probabilities of each block from the saved log-sum-exp and forms dg, dtheta
// and dphi with GEMMs around one fused pass for ds = scale * p * (dp - D). bfloat16 inputs
// run bfloat16 GEMMs (float32 accumulation) with the row passes in float32; float16 inputs
// are computed in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../kernels/nlm.h"
#include "../ops/nlm.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using namespace nlm;

// Bytes of one (B, Q, N) tile of logits; the backward holds two.
constexpr int64_t kScoreTileBytes = int64_t(8) << 20;

// Queries per block. Where the whole (B, N, N) affinity is no larger than the output (N <= C)
// and fits the tile, one block takes all of it: the op's memory stays O(B N C) either way, and
// blocks would cost a copy of every output block and float32 sums of dg and dphi. Otherwise a
// block holds at most half of the queries (for N > 1), so the whole affinity is never allocated.
int64_t query_block(int64_t batch, int64_t positions, int64_t channels, int64_t elem_bytes) {
  const int64_t per_query = std::max<int64_t>(1, batch * positions * elem_bytes);
  if (positions <= channels && positions <= kScoreTileBytes / per_query) return std::max<int64_t>(1, positions);
  const int64_t half = std::max<int64_t>(1, (positions + 1) / 2);
  return std::clamp<int64_t>(kScoreTileBytes / per_query, 1, positions > 1 ? half : 1);
}

// The row passes read and write the tiles in the storage type st (the GEMMs' dtype: float32 or
// float64, or bfloat16 for bfloat16 inputs) and compute in acc (float32; float64 for float64).
// A bfloat16 row is converted to a float copy, worked on there and converted back, each value
// rounded once: loops the compiler vectorises (c10's per-element conversions keep them scalar).

// Per-thread float copies of a row, reused across rows.
template <typename acc>
struct RowCopies {
  std::vector<acc> first, second;
};

template <typename acc>
RowCopies<acc>& row_copies() {
  thread_local RowCopies<acc> copies;
  return copies;
}

// The n values of row as acc: row itself, or its conversion into copy (then written back by
// store_acc after any change).
template <typename st, typename acc>
inline acc* load_acc(st* row, int64_t n, std::vector<acc>& copy) {
  if constexpr (std::is_same_v<st, acc>) {
    return row;
  } else {
    copy.resize(n);
    cpu::convert(row, copy.data(), n);
    return copy.data();
  }
}

template <typename st, typename acc>
inline const acc* load_acc(const st* row, int64_t n, std::vector<acc>& copy) {
  return load_acc<st, acc>(const_cast<st*>(row), n, copy);  // only read
}

template <typename st, typename acc>
inline void store_acc(const acc* values, st* row, int64_t n) {
  if constexpr (!std::is_same_v<st, acc>) cpu::convert(values, row, n);
}

// One row of logits -> exp(s_j - shift) / sum_j exp(s_j - shift), in place; returns the sum.
template <typename acc>
inline acc normalised_exp_row(acc* __restrict__ row, int64_t n, acc shift) {
  cpu::Lanes<acc> sum;
  for (int64_t j = 0; j < n; ++j) row[j] = math::PolyExp::exp(row[j] - shift);
  sum.add(row, n);
  const acc total = sum.total();
  const acc inv = acc(1) / total;
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  return total;
}

// Logit rows -> softmax rows in place, and each row's log-sum-exp.
template <typename st, typename acc>
FR_CPU_MULTIVERSION void softmax_rows(st* __restrict__ s, int64_t rows, int64_t n, acc* __restrict__ lse) {
  auto& copies = row_copies<acc>();
  for (int64_t r = 0; r < rows; ++r) {
    acc* row = load_acc<st, acc>(s + r * n, n, copies.first);
    acc m = neg_inf<acc>();
    for (int64_t j = 0; j < n; ++j) m = RowMax{}(m, row[j]);
    lse[r] = row_lse(m, normalised_exp_row(row, n, m));
    store_acc(row, s + r * n, n);
  }
}

// Logit rows -> probabilities in place, exp(s - lse_i) from each row's saved log-sum-exp,
// renormalised to sum to 1; true where a row whose lse is finite got a NaN (a NaN logit that
// the forward's logits did not hold: see compute_dtype). The saved lse is rounded to its type's
// spacing at |lse| (3e-5 at 400 in float32), which scales a whole row of exp(s - lse) by a
// common factor: the division removes it, where D_i = sum_j p_ij dp_ij would keep it and
// ds_ij = p_ij (dp_ij - D_i), a difference of nearly equal numbers, would lose its digits at
// large logits.
template <typename st, typename acc>
FR_CPU_MULTIVERSION bool probability_rows(st* __restrict__ s, int64_t rows, int64_t n, const acc* __restrict__ lse) {
  auto& copies = row_copies<acc>();
  bool lost = false;
  for (int64_t r = 0; r < rows; ++r) {
    acc* row = load_acc<st, acc>(s + r * n, n, copies.first);
    const acc total = normalised_exp_row(row, n, lse[r]);
    lost |= total != total && lse[r] - lse[r] == acc(0);
    store_acc(row, s + r * n, n);
  }
  return lost;
}

// dp rows -> scale * p * (dp - D_i) in place, with D_i = sum_j p_ij dp_ij taken from the same
// tile (a block holds whole rows): equal to dy_i . y_i, but rounded like p and dp, so that
// ds is exactly 0 where the softmax is flat in the row (as PyTorch's softmax backward).
template <typename st, typename acc>
FR_CPU_MULTIVERSION void logit_grad_rows(const st* __restrict__ p, st* __restrict__ dp, int64_t rows, int64_t n,
                                         acc scale) {
  auto& copies = row_copies<acc>();
  for (int64_t r = 0; r < rows; ++r) {
    const acc* __restrict__ pr = load_acc<st, acc>(p + r * n, n, copies.first);
    acc* __restrict__ dr = load_acc<st, acc>(dp + r * n, n, copies.second);
    cpu::Lanes<acc> dot;
    dot.add_dot(pr, dr, n);
    const acc d = dot.total();
    for (int64_t j = 0; j < n; ++j) dr[j] = scaled_logit_grad(pr[j], dr[j], d, scale);
    store_acc(dr, dp + r * n, n);
  }
}

// Runs f(rows of the (B, Q, N) tile, their (B, Q) statistics) in parallel over (sample, query).
template <typename F>
void for_rows(int64_t batch, int64_t block, F f) {
  at::parallel_for(0, batch * block, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1;) {
      // contiguous run of rows within one sample
      const int64_t b = r / block, end = std::min(r1, (b + 1) * block);
      f(b, r - b * block, end - r);
      r = end;
    }
  });
}

// Buffers of one block of queries, reallocated only for a shorter last block, so that every
// GEMM below writes a contiguous tensor (ATen copies through a temporary otherwise).
struct BlockBuffer {
  at::Tensor full;
  at::Tensor get(int64_t len, int64_t dim) {
    if (full.size(dim) == len) return full;
    auto sizes = full.sizes().vec();
    sizes[dim] = len;
    return at::empty(sizes, full.options());
  }
};

// The (B, Q, N) logits scale * theta_i . phi_j of queries [q0, q0 + Q).
at::Tensor logit_tile(const at::Tensor& q, const at::Tensor& k, int64_t q0, int64_t len, double scale,
                      BlockBuffer& tiles) {
  at::Tensor out = tiles.get(len, 1);
  const at::Tensor queries = q.narrow(2, q0, len).transpose(1, 2);
  if (scale == 0) {
    // baddbmm with alpha = beta = 0 leaves a bfloat16 `out` as it was (uninitialised memory);
    // the product times 0 also keeps 0 * inf = NaN, as the reference's scale * (theta^T phi).
    return at::bmm_out(out, queries, k).mul_(0.0);
  }
  return at::baddbmm_out(out, out, queries, k, /*beta=*/0, /*alpha=*/scale);
}

// out[:, :, q0 : q0 + len] = a @ b: straight into out when the block is all of it.
void bmm_into_columns(at::Tensor& out, int64_t q0, int64_t len, const at::Tensor& a, const at::Tensor& b,
                      BlockBuffer& buffer) {
  if (len == out.size(2)) {
    at::bmm_out(out, a, b);
    return;
  }
  at::Tensor t = buffer.get(len, 2);
  at::bmm_out(t, a, b);
  out.narrow(2, q0, len).copy_(t);
}

// out = a @ b for the first block, out += a @ b after (no zero fill). A float32 `out` for
// bfloat16 a, b sums the blocks' products in float32 (each product is rounded once).
void bmm_accumulate(at::Tensor& out, bool first, const at::Tensor& a, const at::Tensor& b) {
  if (out.scalar_type() != a.scalar_type()) {
    const at::Tensor part = at::bmm(a, b);
    first ? out.copy_(part) : out.add_(part);
  } else if (first) {
    at::bmm_out(out, a, b);
  } else {
    out.baddbmm_(a, b);
  }
}

// The dtype of the GEMMs and tiles: bfloat16 inputs stay bfloat16 (this CPU path runs bfloat16
// GEMMs with float32 accumulation, several times faster than float32 GEMMs where the CPU has
// bfloat16 dot products), float16 is computed in float32, float32 and float64 as they are.
// The bfloat16 GEMMs read subnormal inputs as 0 (oneDNN's kernels for larger products), which
// turns inf * 1e-40 into a NaN logit where the contract's is +-inf: the ops run again in float32
// where that may have happened (a NaN lse while theta or phi holds an infinity; in the
// backward a NaN probability in a row whose lse is finite). Checking theta and phi for
// infinities up front would cost 4-5 % of the forward at C512 16x16 and C1024 28x28.
at::ScalarType compute_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 ? at::kBFloat16 : acc_dtype(t);
}

bool holds_infinity(const at::Tensor& contiguous_bf16) {
  const auto* bits = reinterpret_cast<const uint16_t*>(contiguous_bf16.data_ptr<at::BFloat16>());
  std::atomic<bool> found{false};
  at::parallel_for(0, contiguous_bf16.numel(), int64_t(1) << 16, [&](int64_t begin, int64_t end) {
    uint32_t infinities = 0;  // +-inf: exponent all ones, mantissa 0
    for (int64_t i = begin; i < end; ++i) infinities += (bits[i] & 0x7fffu) == 0x7f80u;
    if (infinities != 0) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

template <typename acc>
acc* row_ptr(const at::Tensor& t, int64_t b, int64_t i) {
  return t.data_ptr<acc>() + b * t.stride(0) + i * t.stride(1);
}

// y (B, C, N) in st_type, the GEMMs and tiles in st_type; lse written.
at::Tensor forward_in(const Prepared& p, at::ScalarType st_type, at::Tensor& lse, double scale) {
  at::Tensor y = at::empty({p.batch, p.channels, p.positions}, p.g.options().dtype(st_type));
  if (p.batch > 0 && p.positions > 0) {
    const at::Tensor q = p.theta.to(st_type), k = p.phi.to(st_type), v = p.g.to(st_type);
    const int64_t block = query_block(p.batch, p.positions, p.channels, c10::elementSize(st_type));
    BlockBuffer tiles{at::empty({p.batch, block, p.positions}, q.options())};
    BlockBuffer y_tiles{block < p.positions ? at::empty({p.batch, p.channels, block}, q.options()) : at::Tensor()};
    for (int64_t q0 = 0; q0 < p.positions; q0 += block) {
      const int64_t len = std::min(block, p.positions - q0);
      at::Tensor s = logit_tile(q, k, q0, len, scale, tiles);
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, st_type, "nlm_gaussian_softmax", [&] {
        using acc = typename cpu_acc<scalar_t>::type;
        for_rows(p.batch, len, [&](int64_t b, int64_t i, int64_t rows) {
          softmax_rows(row_ptr<scalar_t>(s, b, i), rows, p.positions, row_ptr<acc>(lse, b, q0 + i));
        });
      });
      bmm_into_columns(y, q0, len, v, s.transpose(1, 2), y_tiles);  // y_i = sum_j p_ij g_j
    }
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor> nlm_gaussian_cpu(const at::Tensor& theta, const at::Tensor& phi,
                                                    const at::Tensor& g, double scale) {
  const Prepared p = prepare(theta, phi, g, scale);
  at::Tensor lse = at::empty({p.batch, p.positions}, theta.options().dtype(acc_dtype(theta)));
  at::Tensor y = forward_in(p, compute_dtype(theta), lse, scale);
  if (y.scalar_type() == at::kBFloat16 && lse.isnan().any().item<bool>() &&
      (holds_infinity(p.theta) || holds_infinity(p.phi)))
    y = forward_in(p, at::kFloat, lse, scale);  // compute_dtype: a NaN logit that may be inf * 0
  return {y.to(g.scalar_type()).view(g.sizes()), lse};
}

using Gradients = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// dtheta, dphi and dg (B, d or C, N), the GEMMs and tiles in st_type; nothing where a row whose
// lse is finite got a NaN probability (compute_dtype).
std::optional<Gradients> backward_in(const Prepared& p, at::ScalarType st_type, double scale) {
  const auto acc_type = acc_dtype(p.theta);
  const at::Tensor q = p.theta.to(st_type), k = p.phi.to(st_type), v = p.g.to(st_type);
  at::Tensor dq, dk, dv;
  if (p.batch > 0 && p.positions > 0) {
    // dk and dv sum over query blocks: in acc (float32 for bfloat16 inputs) where there are
    // several, each one GEMM (float32 accumulation) into the input type where there is one
    const int64_t block = query_block(p.batch, p.positions, p.channels, c10::elementSize(st_type));
    const auto sum_type = block < p.positions ? acc_type : st_type;
    dq = at::empty_like(q), dk = at::empty_like(k, k.options().dtype(sum_type));
    dv = at::empty_like(v, v.options().dtype(sum_type));
    const at::Tensor dy = p.grad_y.to(st_type);
    BlockBuffer prob_tiles{at::empty({p.batch, block, p.positions}, q.options())};
    BlockBuffer grad_tiles{at::empty({p.batch, block, p.positions}, q.options())};
    BlockBuffer dq_tiles{block < p.positions ? at::empty({p.batch, p.dim, block}, q.options()) : at::Tensor()};
    for (int64_t q0 = 0; q0 < p.positions; q0 += block) {
      const int64_t len = std::min(block, p.positions - q0);
      at::Tensor prob = logit_tile(q, k, q0, len, scale, prob_tiles);
      const at::Tensor dy_block = dy.narrow(2, q0, len);
      at::Tensor ds = grad_tiles.get(len, 1);
      at::bmm_out(ds, dy_block.transpose(1, 2), v);  // dp_ij = dy_i . g_j
      std::atomic<bool> lost{false};
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, st_type, "nlm_gaussian_backward_rows", [&] {
        using acc = typename cpu_acc<scalar_t>::type;
        for_rows(p.batch, len, [&](int64_t b, int64_t i, int64_t rows) {
          scalar_t* prob_rows = row_ptr<scalar_t>(prob, b, i);
          if (probability_rows(prob_rows, rows, p.positions, row_ptr<acc>(p.lse, b, q0 + i)))
            lost.store(true, std::memory_order_relaxed);
          logit_grad_rows(prob_rows, row_ptr<scalar_t>(ds, b, i), rows, p.positions, static_cast<acc>(scale));
        });
      });
      if (lost.load() && st_type != acc_type) return std::nullopt;
      bmm_accumulate(dv, q0 == 0, dy_block, prob);            // dg_j += sum_i p_ij dy_i
      bmm_accumulate(dk, q0 == 0, q.narrow(2, q0, len), ds);  // dphi_j += sum_i ds_ij theta_i
      bmm_into_columns(dq, q0, len, k, ds.transpose(1, 2), dq_tiles);  // dtheta_i = sum_j ds_ij phi_j
    }
  } else {
    dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  }
  return Gradients{dq, dk, dv};
}

Gradients nlm_gaussian_backward_cpu(const at::Tensor& grad_y, const at::Tensor& theta, const at::Tensor& phi,
                                    const at::Tensor& g, const at::Tensor& y, const at::Tensor& lse, double scale) {
  const Prepared p = prepare_backward(grad_y, theta, phi, g, y, lse, scale);
  std::optional<Gradients> grads = backward_in(p, compute_dtype(theta), scale);
  if (!grads) grads = backward_in(p, at::kFloat, scale);  // compute_dtype: a NaN logit that may be inf * 0
  const auto& [dq, dk, dv] = *grads;
  const auto dtype = theta.scalar_type();
  return {dq.to(dtype).view(theta.sizes()), dk.to(dtype).view(phi.sizes()), dv.to(dtype).view(g.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("nlm_gaussian", &nlm_gaussian_cpu);
  m.impl("_nlm_gaussian_backward", &nlm_gaussian_backward_cpu);
}

}  // namespace fastrobust
