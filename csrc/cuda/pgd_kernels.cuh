#pragma once
// PGD engine device code: the fused step (L-inf / L2), the random start, APGD's momentum
// step and the best-point update, with their launchers. Free of CUDA runtime and torch
// headers (compiled by nvcc and, through csrc/emu/cuda_emu.h, by g++ for the emulator).
//
// L-inf ops are elementwise: a grid-stride loop over all elements, the row found by one
// division. L2 ops need per-row sums of squares before they can write, so one block owns
// a row: block-wide sums (warp shuffles, then shared memory), then a final pass that writes;
// earlier passes read the row again from L1/L2 rather than keep it in registers, so any row
// size works. Inactive rows return before touching memory (the whole block, so no barrier
// is left waiting).
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../kernels/pgd.h"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace pgd {

using ::fastrobust::pgd::BestMode;
using ::fastrobust::pgd::BestPtrs;
using ::fastrobust::pgd::Norm;
using ::fastrobust::pgd::RowPtrs;
namespace m = ::fastrobust::pgd;

constexpr int kElementwiseThreads = 256;
constexpr int64_t kMaxElementwiseBlocks = 4096;  // then grid-stride
constexpr int kMaxRowThreads = 512;

inline dim3 elementwise_grid(int64_t numel) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(numel, kElementwiseThreads),
                                                      kMaxElementwiseBlocks)));
}

// Threads for a block that owns one row: about 4 elements per thread, whole warps, <= 512.
inline dim3 row_block(int64_t row_size) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(row_size, 4), kWarpSize);
  return dim3(static_cast<unsigned>(std::clamp<int64_t>(warps * kWarpSize, kWarpSize, kMaxRowThreads)));
}

inline dim3 row_grid(int64_t rows) {
  TORCH_CHECK(rows <= INT32_MAX, "x: at most 2^31 - 1 rows are supported, got ", rows);
  return dim3(static_cast<unsigned>(rows));
}

// eps, alpha and eta are checked where the kernels read them (the host never sees them).
#define FR_CHECK_ROW_PARAM(value, name) \
  FR_DEVICE_ASSERT(m::valid_row_param(value), name " must be finite and >= 0")

// ---- pgd_step_ ---------------------------------------------------------------------------

template <typename scalar_t, bool with_noise>
__global__ void linf_step_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  FR_GLOBAL(scalar_t) x = p.x;
  FR_GLOBAL(const scalar_t) x0 = p.x0;
  FR_GLOBAL(const scalar_t) grad = p.grad;
  FR_GLOBAL(const scalar_t) noise = p.noise;
  grid_stride(p.rows * p.row_size, [&](int64_t i) {
    const int64_t row = i / p.row_size;
    const acc eps = p.eps_of(row), alpha = p.alpha_of(row);
    FR_CHECK_ROW_PARAM(eps, "eps");  // inactive rows too, as the CPU backend's host check
    FR_CHECK_ROW_PARAM(alpha, "alpha");
    if (!p.is_active(row)) return;
    const acc noise_i = with_noise ? acc(noise[i]) : acc(0);
    const acc step = m::signed_step(alpha, p.descent);
    x[i] = m::project_linf(m::raw_step<acc, Norm::Linf>(acc(x[i]), acc(grad[i]), step, acc(1), noise_i),
                           acc(x0[i]), eps, p.lo, p.hi);
  });
}

template <typename scalar_t, bool with_noise>
__global__ void l2_step_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  const int64_t row = blockIdx.x;
  const acc eps = p.eps_of(row), alpha = p.alpha_of(row);
  FR_CHECK_ROW_PARAM(eps, "eps");  // inactive rows too, as the CPU backend's host check
  FR_CHECK_ROW_PARAM(alpha, "alpha");
  if (!p.is_active(row)) return;
  const int64_t n = p.row_size, base = row * n;
  FR_GLOBAL(scalar_t) x = p.x + base;
  FR_GLOBAL(const scalar_t) x0 = p.x0 + base;
  FR_GLOBAL(const scalar_t) g = p.grad + base;
  FR_GLOBAL(const scalar_t) noise_row = with_noise ? p.noise + base : nullptr;
  const acc step = m::signed_step(alpha, p.descent);

  acc s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc gi = acc(g[i]);
    s += gi * gi;
  }
  const acc gden = m::l2_denominator(block_sum(s));

  auto moved = [&](int64_t i) {
    const acc noise = with_noise ? acc(noise_row[i]) : acc(0);
    return m::raw_step<acc, Norm::L2>(acc(x[i]), acc(g[i]), step, gden, noise);
  };
  s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc d = moved(i) - acc(x0[i]);
    s += d * d;
  }
  const acc shrink = m::l2_shrink(block_sum(s), eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    x[i] = m::project_l2(moved(i), acc(x0[i]), shrink, p.lo, p.hi);
}

// ---- pgd_random_init_ --------------------------------------------------------------------

template <typename scalar_t>
__global__ void linf_random_init_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  FR_GLOBAL(scalar_t) x = p.x;
  FR_GLOBAL(const scalar_t) x0 = p.x0;
  grid_stride(p.rows * p.row_size, [&](int64_t i) {
    const acc eps = p.eps_of(i / p.row_size);
    FR_CHECK_ROW_PARAM(eps, "eps");
    x[i] = m::linf_start(acc(x0[i]), eps, philox::uniform(p.seed, p.offset, static_cast<uint64_t>(i)),
                           p.lo, p.hi);
  });
}

template <typename scalar_t>
__global__ void l2_random_init_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  const int64_t row = blockIdx.x, n = p.row_size, base = row * n;
  FR_GLOBAL(scalar_t) x = p.x + base;
  FR_GLOBAL(const scalar_t) x0 = p.x0 + base;
  auto gauss = [&](int64_t i) {
    return acc(philox::normal(p.seed, p.offset, static_cast<uint64_t>(base + i)));
  };
  const acc eps = p.eps_of(row);
  FR_CHECK_ROW_PARAM(eps, "eps");
  acc s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += gauss(i) * gauss(i);
  const acc radius = m::l2_start_radius(
      eps, philox::uniform(p.seed, p.offset ^ m::kRadiusStream, static_cast<uint64_t>(row)), n);
  const acc scale = radius / m::l2_denominator(block_sum(s));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = m::clamp(acc(x0[i]) + gauss(i) * scale, p.lo, p.hi);
}

// ---- apgd_step_ --------------------------------------------------------------------------

template <typename scalar_t>
__global__ void linf_apgd_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  FR_GLOBAL(scalar_t) x = p.x;
  FR_GLOBAL(scalar_t) x_prev = p.x_prev;
  FR_GLOBAL(const scalar_t) x0 = p.x0;
  FR_GLOBAL(const scalar_t) grad = p.grad;
  grid_stride(p.rows * p.row_size, [&](int64_t i) {
    const int64_t row = i / p.row_size;
    const scalar_t x_old = x[i];
    const acc eps = p.eps_of(row), eta = p.alpha_of(row), xi = acc(x_old), x0i = acc(x0[i]);
    FR_CHECK_ROW_PARAM(eps, "eps");
    FR_CHECK_ROW_PARAM(eta, "eta");
    const acc z = m::project_linf(m::raw_step<acc, Norm::Linf>(xi, acc(grad[i]), eta, acc(1), acc(0)),
                                  x0i, eps, p.lo, p.hi);
    const acc x_new = m::project_linf(m::momentum_mix(xi, z, acc(x_prev[i]), p.momentum), x0i, eps, p.lo, p.hi);
    x_prev[i] = x_old;
    x[i] = x_new;
  });
}

template <typename scalar_t>
__global__ void l2_apgd_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  const int64_t row = blockIdx.x, n = p.row_size, base = row * n;
  FR_GLOBAL(scalar_t) x = p.x + base;
  FR_GLOBAL(scalar_t) xp = p.x_prev + base;
  FR_GLOBAL(const scalar_t) x0 = p.x0 + base;
  FR_GLOBAL(const scalar_t) g = p.grad + base;
  const acc eps = p.eps_of(row), eta = p.alpha_of(row);
  FR_CHECK_ROW_PARAM(eps, "eps");
  FR_CHECK_ROW_PARAM(eta, "eta");

  acc s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc gi = acc(g[i]);
    s += gi * gi;
  }
  const acc gden = m::l2_denominator(block_sum(s));
  auto z_raw = [&](int64_t i) { return m::raw_step<acc, Norm::L2>(acc(x[i]), acc(g[i]), eta, gden, acc(0)); };
  s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc d = z_raw(i) - acc(x0[i]);
    s += d * d;
  }
  const acc shrink_z = m::l2_shrink(block_sum(s), eps);
  auto mixed = [&](int64_t i) {
    const acc z = m::project_l2(z_raw(i), acc(x0[i]), shrink_z, p.lo, p.hi);
    return m::momentum_mix(acc(x[i]), z, acc(xp[i]), p.momentum);
  };
  s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc d = mixed(i) - acc(x0[i]);
    s += d * d;
  }
  const acc shrink = m::l2_shrink(block_sum(s), eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const scalar_t x_old = x[i];
    const acc x_new = m::project_l2(mixed(i), acc(x0[i]), shrink, p.lo, p.hi);
    xp[i] = x_old;
    x[i] = x_new;
  }
}

// ---- pgd_update_best_ --------------------------------------------------------------------

// One block per row: every thread decides from the row's scalars, copies its share of the
// row if it is better, and thread 0 writes the scalars once all threads have read them.
template <typename scalar_t>
__global__ void update_best_kernel(BestPtrs<scalar_t, acc_t<scalar_t>> b) {
  using acc = acc_t<scalar_t>;
  const int64_t row = blockIdx.x, n = b.row_size;
  FR_GLOBAL(acc) best_loss = b.best_loss;
  FR_GLOBAL(bool) success = b.success;
  FR_GLOBAL(const acc) losses = b.loss;
  FR_GLOBAL(const bool) adversarial = b.is_adv;
  const acc loss = losses[row];
  const bool is_adv = adversarial[row];
  const bool succeeded = success[row];
  const bool take = m::better(b.mode, loss, is_adv, acc(best_loss[row]), succeeded);
  const bool usable = m::usable_point(loss);
  const bool adv = usable && is_adv;
  FR_GLOBAL(scalar_t) best_x = b.best_x + row * n;
  FR_GLOBAL(const scalar_t) x = b.x + row * n;
  if (take)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) best_x[i] = x[i];
  __syncthreads();
  if (threadIdx.x == 0) {
    if (take) best_loss[row] = loss;
    success[row] = succeeded || adv;
    if (b.nonfinite != nullptr) b.nonfinite[row] = b.nonfinite[row] || !usable;
  }
}

// ---- launchers -------------------------------------------------------------------------

// An L-inf kernel runs elementwise over all elements, an L2 kernel one block per row.
template <typename P, typename LinfKernel, typename L2Kernel>
void launch_by_norm(LinfKernel linf_kernel, L2Kernel l2_kernel, const P& p, Norm norm, cudaStream_t stream) {
  if (norm == Norm::Linf)
    FR_LAUNCH(linf_kernel, elementwise_grid(p.rows * p.row_size), dim3(kElementwiseThreads), 0, stream, p);
  else
    FR_LAUNCH(l2_kernel, row_grid(p.rows), row_block(p.row_size), 0, stream, p);
}

template <typename scalar_t>
void launch_step(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  if (p.noise != nullptr)
    launch_by_norm(linf_step_kernel<scalar_t, true>, l2_step_kernel<scalar_t, true>, p, norm, stream);
  else
    launch_by_norm(linf_step_kernel<scalar_t, false>, l2_step_kernel<scalar_t, false>, p, norm, stream);
}

template <typename scalar_t>
void launch_random_init(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  launch_by_norm(linf_random_init_kernel<scalar_t>, l2_random_init_kernel<scalar_t>, p, norm, stream);
}

template <typename scalar_t>
void launch_apgd(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  launch_by_norm(linf_apgd_kernel<scalar_t>, l2_apgd_kernel<scalar_t>, p, norm, stream);
}

template <typename scalar_t>
void launch_update_best(const BestPtrs<scalar_t, acc_t<scalar_t>>& b, cudaStream_t stream) {
  FR_LAUNCH(update_best_kernel<scalar_t>, row_grid(b.rows), row_block(b.row_size), 0, stream, b);
}

}  // namespace pgd
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
