// Softmax non-local means, CPU backend: blocks of queries. For each block of Q queries of
// every sample, the (B, Q, N) logit tile comes from one batched GEMM, a fused pass turns it
// into probabilities in place (row max, exp, sum, log-sum-exp), and a second GEMM applies it
// to the values. The tile is bounded by kScoreTileBytes and by half of the queries, so the
// extra memory is O(B * N) plus that bound, never the whole (B, N, N) affinity. The backward
// recomputes the probabilities of each block from the saved log-sum-exp and forms dg, dtheta
// and dphi with GEMMs around one fused pass for ds = scale * p * (dp - D). Inputs of 16-bit
// types are computed in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../kernels/nlm.h"
#include "../ops/nlm.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using namespace nlm;

// Bytes of one (B, Q, N) tile of logits; the backward holds two. A tile also holds at most
// half of the queries (for N > 1), so the whole (B, N, N) affinity is never allocated.
constexpr int64_t kScoreTileBytes = int64_t(8) << 20;

int64_t query_block(int64_t batch, int64_t positions, int64_t elem_bytes) {
  const int64_t per_query = std::max<int64_t>(1, batch * positions * elem_bytes);
  const int64_t half = std::max<int64_t>(1, (positions + 1) / 2);
  return std::clamp<int64_t>(kScoreTileBytes / per_query, 1, positions > 1 ? half : 1);
}

// Logit rows -> softmax rows in place, and each row's log-sum-exp.
template <typename acc>
FR_CPU_MULTIVERSION void softmax_rows(acc* __restrict__ s, int64_t rows, int64_t n, acc* __restrict__ lse) {
  for (int64_t r = 0; r < rows; ++r) {
    acc* row = s + r * n;
    acc m = neg_inf<acc>();
    for (int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
    cpu::Lanes<acc> sum;
    for (int64_t j = 0; j < n; ++j) row[j] = math::PolyExp::exp(row[j] - m);
    sum.add(row, n);
    const acc l = sum.total();
    const acc inv = acc(1) / l;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    lse[r] = row_lse(m, l);
  }
}

// Logit rows -> probabilities in place, from each row's saved log-sum-exp.
template <typename acc>
FR_CPU_MULTIVERSION void probability_rows(acc* __restrict__ s, int64_t rows, int64_t n, const acc* __restrict__ lse) {
  for (int64_t r = 0; r < rows; ++r) {
    acc* row = s + r * n;
    const acc l = lse[r];
    for (int64_t j = 0; j < n; ++j) row[j] = probability<acc, math::PolyExp>(row[j], l);
  }
}

// dp rows -> scale * p * (dp - D_i) in place.
template <typename acc>
FR_CPU_MULTIVERSION void logit_grad_rows(const acc* __restrict__ p, acc* __restrict__ dp, int64_t rows, int64_t n,
                                         const acc* __restrict__ row_dot, acc scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const acc d = row_dot[r];
    for (int64_t j = 0; j < n; ++j) dp[r * n + j] = scaled_logit_grad(p[r * n + j], dp[r * n + j], d, scale);
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
  return at::baddbmm_out(out, out, q.narrow(2, q0, len).transpose(1, 2), k, /*beta=*/0, /*alpha=*/scale);
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

// out = a @ b for the first block, out += a @ b after (no zero fill).
void bmm_accumulate(at::Tensor& out, bool first, const at::Tensor& a, const at::Tensor& b) {
  if (first)
    at::bmm_out(out, a, b);
  else
    out.baddbmm_(a, b);
}

template <typename acc>
acc* row_ptr(const at::Tensor& t, int64_t b, int64_t i) {
  return t.data_ptr<acc>() + b * t.stride(0) + i * t.stride(1);
}

std::tuple<at::Tensor, at::Tensor> nlm_gaussian_cpu(const at::Tensor& theta, const at::Tensor& phi,
                                                    const at::Tensor& g, double scale) {
  const Prepared p = prepare(theta, phi, g, scale);
  const auto acc_type = acc_dtype(theta);
  at::Tensor lse = at::empty({p.batch, p.positions}, theta.options().dtype(acc_type));
  at::Tensor y = at::empty({p.batch, p.channels, p.positions}, g.options().dtype(acc_type));
  if (p.batch > 0 && p.positions > 0) {
    const at::Tensor q = p.theta.to(acc_type), k = p.phi.to(acc_type), v = p.g.to(acc_type);
    const int64_t block = query_block(p.batch, p.positions, c10::elementSize(acc_type));
    BlockBuffer tiles{at::empty({p.batch, block, p.positions}, q.options())};
    BlockBuffer y_tiles{block < p.positions ? at::empty({p.batch, p.channels, block}, q.options()) : at::Tensor()};
    for (int64_t q0 = 0; q0 < p.positions; q0 += block) {
      const int64_t len = std::min(block, p.positions - q0);
      at::Tensor s = logit_tile(q, k, q0, len, scale, tiles);
      AT_DISPATCH_FLOATING_TYPES(acc_type, "nlm_gaussian_softmax", [&] {
        for_rows(p.batch, len, [&](int64_t b, int64_t i, int64_t rows) {
          softmax_rows(row_ptr<scalar_t>(s, b, i), rows, p.positions, row_ptr<scalar_t>(lse, b, q0 + i));
        });
      });
      bmm_into_columns(y, q0, len, v, s.transpose(1, 2), y_tiles);  // y_i = sum_j p_ij g_j
    }
  }
  return {y.to(g.scalar_type()).view(g.sizes()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nlm_gaussian_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
    const at::Tensor& y, const at::Tensor& lse, double scale) {
  const Prepared p = prepare_backward(grad_y, theta, phi, g, y, lse, scale);
  const auto acc_type = acc_dtype(theta);
  const at::Tensor q = p.theta.to(acc_type), k = p.phi.to(acc_type), v = p.g.to(acc_type);
  at::Tensor dq, dk, dv;
  if (p.batch > 0 && p.positions > 0) {
    dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
    const at::Tensor dy = p.grad_y.to(acc_type);
    const at::Tensor row_dot = at::sum(at::mul(dy, p.y.to(acc_type)), {1});  // D_i, (B, N)
    const int64_t block = query_block(p.batch, p.positions, c10::elementSize(acc_type));
    BlockBuffer prob_tiles{at::empty({p.batch, block, p.positions}, q.options())};
    BlockBuffer grad_tiles{at::empty({p.batch, block, p.positions}, q.options())};
    BlockBuffer dq_tiles{block < p.positions ? at::empty({p.batch, p.dim, block}, q.options()) : at::Tensor()};
    for (int64_t q0 = 0; q0 < p.positions; q0 += block) {
      const int64_t len = std::min(block, p.positions - q0);
      at::Tensor prob = logit_tile(q, k, q0, len, scale, prob_tiles);
      const at::Tensor dy_block = dy.narrow(2, q0, len);
      at::Tensor ds = grad_tiles.get(len, 1);
      at::bmm_out(ds, dy_block.transpose(1, 2), v);  // dp_ij = dy_i . g_j
      AT_DISPATCH_FLOATING_TYPES(acc_type, "nlm_gaussian_backward_rows", [&] {
        for_rows(p.batch, len, [&](int64_t b, int64_t i, int64_t rows) {
          scalar_t* prob_rows = row_ptr<scalar_t>(prob, b, i);
          probability_rows(prob_rows, rows, p.positions, row_ptr<scalar_t>(p.lse, b, q0 + i));
          logit_grad_rows(prob_rows, row_ptr<scalar_t>(ds, b, i), rows, p.positions,
                          row_ptr<scalar_t>(row_dot, b, q0 + i), static_cast<scalar_t>(scale));
        });
      });
      bmm_accumulate(dv, q0 == 0, dy_block, prob);            // dg_j += sum_i p_ij dy_i
      bmm_accumulate(dk, q0 == 0, q.narrow(2, q0, len), ds);  // dphi_j += sum_i ds_ij theta_i
      bmm_into_columns(dq, q0, len, k, ds.transpose(1, 2), dq_tiles);  // dtheta_i = sum_j ds_ij phi_j
    }
  } else {
    dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  }
  const auto dtype = theta.scalar_type();
  return {dq.to(dtype).view(theta.sizes()), dk.to(dtype).view(phi.sizes()), dv.to(dtype).view(g.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("nlm_gaussian", &nlm_gaussian_cpu);
  m.impl("_nlm_gaussian_backward", &nlm_gaussian_backward_cpu);
}

}  // namespace fastrobust
