// PGD engine ops, CPU backend. Work is split by rows (at::parallel_for); inside a row the
// loops are flat over the row's elements and vectorise (FR_CPU_MULTIVERSION). L2 rows take
// two or three passes (sums of squares first, then the update); a row is small enough to
// stay in cache between passes. The per-element maths is csrc/kernels/pgd.h, shared with
// the CUDA kernels.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "../kernels/pgd.h"
#include "../ops/pgd.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using namespace pgd;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

// Rows per parallel task: a few image-sized rows, or many small ones.
int64_t grain_rows(int64_t row_size) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_size, 1)); }

// sum over i < n of f(i)^2, in kLanes partial sums so that it vectorises without reassociation.
template <typename acc, typename F>
inline acc sum_sq(int64_t n, F f) {
  acc lane[cpu::kLanes] = {};
  int64_t i = 0;
  for (; i + cpu::kLanes <= n; i += cpu::kLanes)
    for (int l = 0; l < cpu::kLanes; ++l) {
      const acc v = f(i + l);
      lane[l] += v * v;
    }
  acc total = 0;
  for (; i < n; ++i) {
    const acc v = f(i);
    total += v * v;
  }
  for (int l = 0; l < cpu::kLanes; ++l) total += lane[l];
  return total;
}

template <typename scalar_t, Norm norm, bool with_noise>
FR_CPU_MULTIVERSION void step_rows(const RowPtrs<scalar_t, typename cpu_acc<scalar_t>::type>& p,
                                   int64_t r0, int64_t r1) {
  using acc = typename cpu_acc<scalar_t>::type;
  const int64_t n = p.row_size;
  for (int64_t row = r0; row < r1; ++row) {
    if (!p.is_active(row)) continue;
    scalar_t* __restrict__ x = p.x + row * n;
    const scalar_t* __restrict__ x0 = p.x0 + row * n;
    const scalar_t* __restrict__ g = p.grad + row * n;
    const scalar_t* __restrict__ noise = with_noise ? p.noise + row * n : nullptr;
    const acc eps = p.eps_of(row), step = signed_step(p.alpha_of(row), p.descent);
    auto noise_at = [&](int64_t i) { return with_noise ? acc(noise[i]) : acc(0); };
    if constexpr (norm == Norm::Linf) {
      for (int64_t i = 0; i < n; ++i)
        x[i] = project_linf(raw_step<acc, Norm::Linf>(x[i], g[i], step, acc(1), noise_at(i)),
                            acc(x0[i]), eps, p.lo, p.hi);
    } else {
      const acc gden = l2_denominator(sum_sq<acc>(n, [&](int64_t i) { return acc(g[i]); }));
      auto moved = [&](int64_t i) { return raw_step<acc, Norm::L2>(x[i], g[i], step, gden, noise_at(i)); };
      const acc shrink = l2_shrink(sum_sq<acc>(n, [&](int64_t i) { return moved(i) - acc(x0[i]); }), eps);
      for (int64_t i = 0; i < n; ++i) x[i] = project_l2(moved(i), acc(x0[i]), shrink, p.lo, p.hi);
    }
  }
}

template <typename scalar_t, Norm norm>
FR_CPU_MULTIVERSION void random_init_rows(const RowPtrs<scalar_t, typename cpu_acc<scalar_t>::type>& p,
                                          int64_t r0, int64_t r1) {
  using acc = typename cpu_acc<scalar_t>::type;
  const int64_t n = p.row_size;
  for (int64_t row = r0; row < r1; ++row) {
    scalar_t* x = p.x + row * n;
    const scalar_t* x0 = p.x0 + row * n;
    const uint64_t first = static_cast<uint64_t>(row * n);
    const acc eps = p.eps_of(row);
    if constexpr (norm == Norm::Linf) {
      for (int64_t i = 0; i < n; ++i)
        x[i] = linf_start(acc(x0[i]), eps, philox::uniform(p.seed, p.offset, first + i), p.lo, p.hi);
    } else {
      auto gauss = [&](int64_t i) { return acc(philox::normal(p.seed, p.offset, first + i)); };
      const acc radius = l2_start_radius(eps, philox::uniform(p.seed, p.offset ^ kRadiusStream, row), n);
      const acc scale = radius / l2_denominator(sum_sq<acc>(n, gauss));
      for (int64_t i = 0; i < n; ++i) x[i] = clamp(acc(x0[i]) + gauss(i) * scale, p.lo, p.hi);
    }
  }
}

template <typename scalar_t, Norm norm>
FR_CPU_MULTIVERSION void apgd_rows(const RowPtrs<scalar_t, typename cpu_acc<scalar_t>::type>& p,
                                   int64_t r0, int64_t r1) {
  using acc = typename cpu_acc<scalar_t>::type;
  const int64_t n = p.row_size;
  const acc a = p.momentum;
  for (int64_t row = r0; row < r1; ++row) {
    scalar_t* __restrict__ x = p.x + row * n;
    scalar_t* __restrict__ xp = p.x_prev + row * n;
    const scalar_t* __restrict__ x0 = p.x0 + row * n;
    const scalar_t* __restrict__ g = p.grad + row * n;
    const acc eps = p.eps_of(row), eta = p.alpha_of(row);
    if constexpr (norm == Norm::Linf) {
      for (int64_t i = 0; i < n; ++i) {
        const acc xi = x[i], x0i = x0[i];
        const acc z = project_linf(raw_step<acc, Norm::Linf>(xi, g[i], eta, acc(1), acc(0)), x0i, eps, p.lo, p.hi);
        const acc x_new = project_linf(momentum_mix(xi, z, acc(xp[i]), a), x0i, eps, p.lo, p.hi);
        xp[i] = x[i];
        x[i] = x_new;
      }
    } else {
      const acc gden = l2_denominator(sum_sq<acc>(n, [&](int64_t i) { return acc(g[i]); }));
      auto z_raw = [&](int64_t i) { return raw_step<acc, Norm::L2>(x[i], g[i], eta, gden, acc(0)); };
      const acc shrink_z = l2_shrink(sum_sq<acc>(n, [&](int64_t i) { return z_raw(i) - acc(x0[i]); }), eps);
      auto mixed = [&](int64_t i) {
        const acc z = project_l2(z_raw(i), acc(x0[i]), shrink_z, p.lo, p.hi);
        return momentum_mix(acc(x[i]), z, acc(xp[i]), a);
      };
      const acc shrink = l2_shrink(sum_sq<acc>(n, [&](int64_t i) { return mixed(i) - acc(x0[i]); }), eps);
      for (int64_t i = 0; i < n; ++i) {
        const acc x_new = project_l2(mixed(i), acc(x0[i]), shrink, p.lo, p.hi);
        xp[i] = x[i];
        x[i] = x_new;
      }
    }
  }
}

// Runs rows(ptrs, r0, r1) over all rows in parallel, for x's dtype.
template <template <typename, Norm> class Rows>
void for_rows(const Prepared& p) {
  if (p.rows == 0 || p.row_size == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(), "pgd_rows", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto ptrs = row_ptrs<scalar_t, acc>(p);
    at::parallel_for(0, p.rows, grain_rows(p.row_size), [&](int64_t r0, int64_t r1) {
      if (p.norm == Norm::Linf) Rows<scalar_t, Norm::Linf>::run(ptrs, r0, r1);
      else Rows<scalar_t, Norm::L2>::run(ptrs, r0, r1);
    });
  });
}

template <typename scalar_t, Norm norm> struct StepRows {
  template <typename P> static void run(const P& p, int64_t r0, int64_t r1) {
    if (p.noise) step_rows<scalar_t, norm, true>(p, r0, r1);
    else step_rows<scalar_t, norm, false>(p, r0, r1);
  }
};
template <typename scalar_t, Norm norm> struct RandomInitRows {
  template <typename P> static void run(const P& p, int64_t r0, int64_t r1) { random_init_rows<scalar_t, norm>(p, r0, r1); }
};
template <typename scalar_t, Norm norm> struct ApgdRows {
  template <typename P> static void run(const P& p, int64_t r0, int64_t r1) { apgd_rows<scalar_t, norm>(p, r0, r1); }
};

void pgd_step_cpu(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& grad,
                  const at::Tensor& eps, const at::Tensor& alpha, const std::optional<at::Tensor>& active,
                  const std::optional<at::Tensor>& noise, c10::string_view norm, double lo, double hi,
                  bool descent) {
  for_rows<StepRows>(prepare_step(x, x0, grad, eps, alpha, active, noise, norm, lo, hi, descent));
}

void pgd_random_init_cpu(const at::Tensor& x, const at::Tensor& x0, const at::Tensor& eps,
                         c10::string_view norm, double lo, double hi, int64_t seed, int64_t offset) {
  for_rows<RandomInitRows>(prepare_random_init(x, x0, eps, norm, lo, hi, seed, offset));
}

void apgd_step_cpu(const at::Tensor& x, const at::Tensor& x_prev, const at::Tensor& x0,
                   const at::Tensor& grad, const at::Tensor& eta, const at::Tensor& eps,
                   double momentum, c10::string_view norm, double lo, double hi) {
  for_rows<ApgdRows>(prepare_apgd_step(x, x_prev, x0, grad, eta, eps, momentum, norm, lo, hi));
}

void pgd_update_best_cpu(const at::Tensor& best_x, const at::Tensor& best_loss, const at::Tensor& success,
                         const at::Tensor& x, const at::Tensor& loss, const at::Tensor& is_adv,
                         c10::string_view mode, const std::optional<at::Tensor>& nonfinite) {
  const PreparedBest p = prepare_update_best(best_x, best_loss, success, x, loss, is_adv, mode, nonfinite);
  if (p.rows == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.best_x.scalar_type(), "pgd_update_best_", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto b = best_ptrs<scalar_t, acc>(p);
    at::parallel_for(0, b.rows, grain_rows(b.row_size), [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        if (better(b.mode, b.loss[row], b.is_adv[row], b.best_loss[row], b.success[row])) {
          std::memcpy(b.best_x + row * b.row_size, b.x + row * b.row_size, sizeof(scalar_t) * b.row_size);
          b.best_loss[row] = b.loss[row];
        }
        const bool usable = usable_point(b.loss[row]);
        b.success[row] = b.success[row] || (usable && b.is_adv[row]);
        if (b.nonfinite != nullptr) b.nonfinite[row] = b.nonfinite[row] || !usable;
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("pgd_step_", &pgd_step_cpu);
  m.impl("pgd_random_init_", &pgd_random_init_cpu);
  m.impl("pgd_update_best_", &pgd_update_best_cpu);
  m.impl("apgd_step_", &apgd_step_cpu);
}

}  // namespace fastrobust
