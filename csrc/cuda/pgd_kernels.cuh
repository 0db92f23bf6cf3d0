#pragma once
// PGD engine device code: the fused step (L-inf / L2), the random start, APGD's momentum
// step and the best-point update, with their launchers. Free of CUDA runtime and torch
// headers (compiled by nvcc and, through csrc/emu/cuda_emu.h, by g++ for the emulator).
//
// L-inf ops are elementwise: a grid-stride loop over all elements, N at a time (a 16-byte
// Pack when every tensor is 16-byte aligned and a row is a whole number of packs, else one),
// the row of the N found by a RowDivider (no 64-bit division). L2 ops need per-row sums of squares before they can write, so one block owns
// a row: block-wide sums (warp shuffles, then shared memory), then a final pass that writes;
// earlier passes read the row again from L1/L2 rather than keep it in registers, so any row
// size works. Inactive rows return before touching memory (the whole block, so no barrier
// is left waiting).
#include <algorithm>
#include <cstdint>

#include "../common/cuda_utils.cuh"
#include "../common/elementwise.cuh"
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

template <typename scalar_t, bool with_noise, int N>
__global__ void linf_step_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p, RowDivider rows) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  FR_GLOBAL(P) x = reinterpret_cast<P*>(p.x);
  FR_GLOBAL(const P) x0 = reinterpret_cast<const P*>(p.x0);
  FR_GLOBAL(const P) grad = reinterpret_cast<const P*>(p.grad);
  FR_GLOBAL(const P) noise = reinterpret_cast<const P*>(p.noise);
  grid_stride(p.rows * p.row_size / N, [&](int64_t v) {
    const int64_t row = rows.of(v * N);
    const acc eps = p.eps_of(row), alpha = p.alpha_of(row);
    FR_CHECK_ROW_PARAM(eps, "eps");  // inactive rows too, as the CPU backend's host check
    FR_CHECK_ROW_PARAM(alpha, "alpha");
    if (!p.is_active(row)) return;
    P xv = x[v];
    const P x0v = x0[v], gv = grad[v];
    P nv{};
    if (with_noise) nv = noise[v];
    const acc step = m::signed_step(alpha, p.descent);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const acc noise_j = with_noise ? acc(nv.v[j]) : acc(0);
      xv.v[j] = m::project_linf(m::raw_step<acc, Norm::Linf>(acc(xv.v[j]), acc(gv.v[j]), step, acc(1), noise_j),
                                acc(x0v.v[j]), eps, p.lo, p.hi);
    }
    x[v] = xv;
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

template <typename scalar_t, int N>
__global__ void linf_random_init_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p, RowDivider rows) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  FR_GLOBAL(P) x = reinterpret_cast<P*>(p.x);
  FR_GLOBAL(const P) x0 = reinterpret_cast<const P*>(p.x0);
  grid_stride(p.rows * p.row_size / N, [&](int64_t v) {
    const acc eps = p.eps_of(rows.of(v * N));
    FR_CHECK_ROW_PARAM(eps, "eps");
    const P x0v = x0[v];
    P xv;
#pragma unroll
    for (int j = 0; j < N; ++j)
      xv.v[j] = m::linf_start(acc(x0v.v[j]), eps,
                              philox::uniform(p.seed, p.offset, static_cast<uint64_t>(v * N + j)), p.lo, p.hi);
    x[v] = xv;
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

template <typename scalar_t, int N>
__global__ void linf_apgd_kernel(RowPtrs<scalar_t, acc_t<scalar_t>> p, RowDivider rows) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  FR_GLOBAL(P) x = reinterpret_cast<P*>(p.x);
  FR_GLOBAL(P) x_prev = reinterpret_cast<P*>(p.x_prev);
  FR_GLOBAL(const P) x0 = reinterpret_cast<const P*>(p.x0);
  FR_GLOBAL(const P) grad = reinterpret_cast<const P*>(p.grad);
  grid_stride(p.rows * p.row_size / N, [&](int64_t v) {
    const int64_t row = rows.of(v * N);
    const acc eps = p.eps_of(row), eta = p.alpha_of(row);
    FR_CHECK_ROW_PARAM(eps, "eps");
    FR_CHECK_ROW_PARAM(eta, "eta");
    const P x_old = x[v], x0v = x0[v], gv = grad[v], xpv = x_prev[v];
    P x_new;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const acc xi = acc(x_old.v[j]), x0i = acc(x0v.v[j]);
      const acc z = m::project_linf(m::raw_step<acc, Norm::Linf>(xi, acc(gv.v[j]), eta, acc(1), acc(0)),
                                    x0i, eps, p.lo, p.hi);
      x_new.v[j] = m::project_linf(m::momentum_mix(xi, z, acc(xpv.v[j]), p.momentum), x0i, eps, p.lo, p.hi);
    }
    x_prev[v] = x_old;
    x[v] = x_new;
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

// One block per row: thread 0 alone reads the row's scalars, decides and writes them (no other
// thread reads them, so no barrier guards them), and the block copies the row, N elements an
// access, if it is better.
template <typename scalar_t, int N>
__global__ void update_best_kernel(BestPtrs<scalar_t, acc_t<scalar_t>> b) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t, N>;
  FR_SHARED(bool, take_row, 1);
  const int64_t row = blockIdx.x, n = b.row_size / N;
  if (threadIdx.x == 0) {
    FR_GLOBAL(acc) best_loss = b.best_loss;
    FR_GLOBAL(bool) success = b.success;
    FR_GLOBAL(bool) nonfinite = b.nonfinite;
    FR_GLOBAL(const acc) losses = b.loss;
    FR_GLOBAL(const bool) adversarial = b.is_adv;
    const acc loss = losses[row];
    const bool is_adv = adversarial[row];
    const bool succeeded = success[row];
    const bool take = m::better(b.mode, loss, is_adv, acc(best_loss[row]), succeeded);
    const bool usable = m::usable_point(loss);
    if (take) best_loss[row] = loss;
    success[row] = succeeded || (usable && is_adv);
    if (nonfinite) nonfinite[row] = nonfinite[row] || !usable;
    take_row[0] = take;
  }
  __syncthreads();
  if (!take_row[0]) return;
  FR_GLOBAL(P) best_x = reinterpret_cast<P*>(b.best_x) + row * n;
  FR_GLOBAL(const P) x = reinterpret_cast<const P*>(b.x) + row * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) best_x[i] = x[i];
}

// ---- launchers -------------------------------------------------------------------------

// An L-inf kernel runs elementwise over all elements, N at a time; an L2 kernel one block per row.
template <int N, typename P, typename Kernel>
void launch_linf(Kernel kernel, const P& p, cudaStream_t stream) {
  FR_LAUNCH(kernel, elementwise_grid(p.rows * p.row_size / N), dim3(kElementwiseThreads), 0, stream, p,
            RowDivider(p.row_size));
}

template <typename P, typename Kernel>
void launch_l2(Kernel kernel, const P& p, cudaStream_t stream) {
  FR_LAUNCH(kernel, row_grid(p.rows), row_block(p.row_size), 0, stream, p);
}

// The packed L-inf path: every tensor 16-byte aligned and a row a whole number of packs, so
// that a pack never straddles two rows.
template <typename scalar_t, typename acc>
bool packable(const RowPtrs<scalar_t, acc>& p) {
  return p.row_size % kPackOf<scalar_t> == 0 && aligned_for_pack(p.x) && aligned_for_pack(p.x_prev) &&
         aligned_for_pack(p.x0) && aligned_for_pack(p.grad) && aligned_for_pack(p.noise);
}

// L2: a block per row; L-inf: packed when packable(p), else one element per access.
template <typename scalar_t, typename L2Kernel, typename PackedKernel, typename ScalarKernel>
void launch_by_norm(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, L2Kernel l2, PackedKernel packed,
                    ScalarKernel scalar, cudaStream_t stream) {
  if (norm == Norm::L2)
    launch_l2(l2, p, stream);
  else if (packable(p))
    launch_linf<kPackOf<scalar_t>>(packed, p, stream);
  else
    launch_linf<1>(scalar, p, stream);
}

template <typename scalar_t, bool with_noise>
void launch_step_with(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  launch_by_norm(p, norm, l2_step_kernel<scalar_t, with_noise>,
                 linf_step_kernel<scalar_t, with_noise, kPackOf<scalar_t>>, linf_step_kernel<scalar_t, with_noise, 1>,
                 stream);
}

template <typename scalar_t>
void launch_step(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  if (p.noise != nullptr)
    launch_step_with<scalar_t, true>(p, norm, stream);
  else
    launch_step_with<scalar_t, false>(p, norm, stream);
}

template <typename scalar_t>
void launch_random_init(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  launch_by_norm(p, norm, l2_random_init_kernel<scalar_t>, linf_random_init_kernel<scalar_t, kPackOf<scalar_t>>,
                 linf_random_init_kernel<scalar_t, 1>, stream);
}

template <typename scalar_t>
void launch_apgd(const RowPtrs<scalar_t, acc_t<scalar_t>>& p, Norm norm, cudaStream_t stream) {
  launch_by_norm(p, norm, l2_apgd_kernel<scalar_t>, linf_apgd_kernel<scalar_t, kPackOf<scalar_t>>,
                 linf_apgd_kernel<scalar_t, 1>, stream);
}

template <int N, typename B, typename Kernel>
void launch_update_best_with(Kernel kernel, const B& b, cudaStream_t stream) {
  FR_LAUNCH(kernel, row_grid(b.rows), row_block(b.row_size / N), 0, stream, b);
}

template <typename scalar_t>
void launch_update_best(const BestPtrs<scalar_t, acc_t<scalar_t>>& b, cudaStream_t stream) {
  constexpr int kP = kPackOf<scalar_t>;
  if (b.row_size % kP == 0 && aligned_for_pack(b.best_x) && aligned_for_pack(b.x))
    launch_update_best_with<kP>(update_best_kernel<scalar_t, kP>, b, stream);
  else
    launch_update_best_with<1>(update_best_kernel<scalar_t, 1>, b, stream);
}

}  // namespace pgd
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
