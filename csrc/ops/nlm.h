#pragma once
// Softmax non-local means nlm_gaussian(theta, phi, g, scale): y_i = sum_j softmax_j(scale *
// theta_i . phi_j) g_j over the N positions of a feature map, flash-style (the N x N affinity
// is never stored). Schemas, checks and the preparation every backend runs first.
#include <ATen/core/Tensor.h>

#include <algorithm>

#include "../kernels/nlm.h"

namespace fastrobust {

// Returns (y, lse): y with g's shape, lse (B, N) the per-query log-sum-exp of the logits in
// the accumulation dtype (float32; float64 for float64 inputs), kept for the backward.
constexpr const char* kNlmGaussianSchema =
    "nlm_gaussian(Tensor theta, Tensor phi, Tensor g, float scale) -> (Tensor, Tensor)";
constexpr const char* kNlmGaussianBackwardSchema =
    "_nlm_gaussian_backward(Tensor grad_y, Tensor theta, Tensor phi, Tensor g, Tensor y, Tensor lse, "
    "float scale) -> (Tensor, Tensor, Tensor)";

namespace nlm {

// Inputs flattened to (B, d, N), (B, d, N), (B, C, N) and made contiguous; in the backward
// also grad_y and y as (B, C, N) and lse (B, N).
struct Prepared {
  at::Tensor theta, phi, g, grad_y, y, lse;
  int64_t batch = 0, dim = 0, channels = 0, positions = 0;
  double scale = 1;
};

// theta, phi: (B, d, H, W) or (B, d, N); g: (B, C, ...) with the same positions; one
// floating dtype and one device; scale finite.
Prepared prepare(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g, double scale);
// The above, plus grad_y and y with g's shape and dtype and lse of shape (B, N) in acc_dtype.
Prepared prepare_backward(const at::Tensor& grad_y, const at::Tensor& theta, const at::Tensor& phi,
                          const at::Tensor& g, const at::Tensor& y, const at::Tensor& lse, double scale);
// float64 for float64 inputs, float32 otherwise.
at::ScalarType acc_dtype(const at::Tensor& t);

// Whether the tensor-core (mma.sync) kernels can run: the device has bf16 tensor cores (compute
// capability >= 8), and the code the device runs was compiled for such an architecture. A
// kernel's code comes from a cubin or is JIT-compiled from PTX; cudaFuncGetAttributes gives
// the architecture of both (binaryVersion, ptxVersion: 10 * major + minor). A build for
// "7.5+PTX" run on an sm_90 GPU JIT-compiles compute_75 PTX, in which the kernels' bodies are
// traps (FR_HAS_WMMA = 0): binaryVersion 90 but ptxVersion 75, so the SIMT kernels run.
inline bool tensor_core_kernels_usable(int device_major, int binary_version, int ptx_version) {
  constexpr int kWmmaArch = 80;
  if (device_major < 8) return false;
  const int compiled_for = ptx_version > 0 ? std::min(binary_version, ptx_version) : binary_version;
  return compiled_for >= kWmmaArch;
}

// Raw arguments of the kernels: every tensor channels-first and contiguous, (B, width, N).
template <typename scalar_t, typename acc>
struct Ptrs {
  const scalar_t *theta, *phi, *g;
  const scalar_t *grad_y, *y;  // backward
  scalar_t* out;               // forward: y
  acc* lse;                    // forward: written; backward: read
  acc* row_dot;                // backward: D_i = sum_c dy_ic y_ic, as partial sums over groups of
                               //   channels: group s of row (b, i) at (s B + b) N + i
  scalar_t *grad_theta, *grad_phi, *grad_g;
  int64_t batch, dim, channels, positions;
  acc scale;
};

template <typename scalar_t, typename acc>
Ptrs<scalar_t, acc> ptrs(const Prepared& p) {
  Ptrs<scalar_t, acc> r{};
  r.theta = p.theta.const_data_ptr<scalar_t>();
  r.phi = p.phi.const_data_ptr<scalar_t>();
  r.g = p.g.const_data_ptr<scalar_t>();
  r.grad_y = p.grad_y.defined() ? p.grad_y.const_data_ptr<scalar_t>() : nullptr;
  r.y = p.y.defined() ? p.y.const_data_ptr<scalar_t>() : nullptr;
  r.batch = p.batch;
  r.dim = p.dim;
  r.channels = p.channels;
  r.positions = p.positions;
  r.scale = static_cast<acc>(p.scale);
  return r;
}

}  // namespace nlm
}  // namespace fastrobust
