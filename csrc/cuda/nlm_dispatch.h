#pragma once
// Tensor-level entry points of the softmax non-local-means device kernels (nvcc and the emulator).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>

#include "../ops/nlm.h"
#include "nlm_kernels.cuh"
#include "nlm_mma_backward_wide.cuh"
#include "nlm_mma_forward_wide.cuh"

namespace fastrobust {
namespace FR_KERNEL_NS {
namespace nlm {

namespace pn = ::fastrobust::nlm;

// The SIMT kernels (the forward above kOutWidth channels, the backward) hold (query, key) planes
// in global memory (Planes, nlm_kernels.cuh): the logits, p and ds in the accumulation type (the
// tensor-core kernels hold none). They run the batch in chunks
// of at most kPlaneBudgetBytes of planes, or of FASTROBUST_NLM_PLANE_BYTES where that is set (the
// tests use it to run several chunks at small sizes), all chunks of one size but the last, which is
// at most one sample smaller. The budget is what sizes the grids of the weighted-sum kernels (a
// block per position tile and output slice of each sample of a chunk): at 256 MiB a 56x56 map's
// chunks were 3-6 samples, grids of 0.4-1.5 waves on an H100; 1 GiB, less than the materialising
// composition holds at those sizes (B N^2 logits, then p and their gradients), gives 2 or more.
constexpr int64_t kPlaneBudgetBytes = int64_t(1) << 30;

// Samples per chunk: as many as the budget holds (at least one), spread evenly over the chunks
// that takes (32 samples of at most 26: 16 + 16, not 26 + 6).
inline int64_t plane_chunk(int64_t batch, int64_t bytes_per_sample) {
  int64_t budget = kPlaneBudgetBytes;
  if (const char* env = std::getenv("FASTROBUST_NLM_PLANE_BYTES")) {
    char* end = nullptr;
    const long long parsed = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && parsed > 0,
                "nlm_gaussian: FASTROBUST_NLM_PLANE_BYTES must be a positive number of bytes, got '", env, "'");
    budget = parsed;
  }
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(batch, budget / std::max<int64_t>(bytes_per_sample, 1)));
  const int64_t chunks = std::max<int64_t>(1, ceil_div<int64_t>(batch, most));
  return ceil_div<int64_t>(batch, chunks);
}

// The planes' tensors (kept alive through the launches) and their untyped pointers.
struct PlaneTensors {
  at::Tensor logits, partials, weights, logit_grads;
  PlaneBuffers buffers{};
};

inline void* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

inline PlaneTensors with_buffers(PlaneTensors planes, int64_t chunk) {
  planes.buffers = {chunk, data_or_null(planes.logits), data_or_null(planes.partials), data_or_null(planes.weights),
                    data_or_null(planes.logit_grads)};
  return planes;
}

// The wide forward's planes: the logits and their row partials, in the accumulation type.
inline PlaneTensors forward_planes(const pn::Prepared& p) {
  const at::ScalarType acc = pn::acc_dtype(p.theta);
  const int64_t n = p.positions, chunk = plane_chunk(p.batch, n * n * c10::elementSize(acc));
  PlaneTensors planes;
  planes.logits = at::empty({chunk, n, n}, p.theta.options().dtype(acc));
  planes.partials = at::empty({chunk, ceil_div<int64_t>(n, kTile), 2, n}, p.theta.options().dtype(acc));
  return with_buffers(planes, chunk);
}

// The SIMT backward's planes: p and ds, in the accumulation type.
inline PlaneTensors backward_planes(const pn::Prepared& p) {
  const at::ScalarType acc = pn::acc_dtype(p.theta);
  const int64_t n = p.positions, chunk = plane_chunk(p.batch, 2 * n * n * c10::elementSize(acc));
  PlaneTensors planes;
  planes.weights = at::empty({chunk, n, n}, p.theta.options().dtype(acc));
  planes.logit_grads = at::empty_like(planes.weights);
  return with_buffers(planes, chunk);
}

// tensor_cores: the device has them (sm_80 or newer) and runs the mma.sync kernels' code; fp16 /
// bf16 inputs then run the mma.sync kernels, and fp32 inputs where torch allows tf32 in CUDA matrix
// products (torch.backends.cuda.matmul.fp32_precision = "tf32", or its legacy allow_tf32 = True,
// or torch.set_float32_matmul_precision("high")), read per call. (allowTF32CuBLAS() would
// raise where a program mixes the legacy and the new setters; this reading takes either.)
inline TensorCores tensor_cores_for(bool tensor_cores) {
  const auto matmul = at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
  return {tensor_cores, matmul == at::Float32Precision::TF32};
}

inline std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& g,
                                                  double scale, bool tensor_cores, cudaStream_t stream) {
  const auto p = pn::prepare(theta, phi, g, scale);
  const TensorCores cores = tensor_cores_for(tensor_cores);
  at::Tensor y = at::empty({p.batch, p.channels, p.positions}, p.g.options());
  at::Tensor lse = at::empty({p.batch, p.positions}, p.theta.options().dtype(pn::acc_dtype(theta)));
  if (p.batch > 0 && p.positions > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.theta.scalar_type(), "nlm_gaussian", [&] {
      const PlaneTensors planes =
          forward_uses_planes<scalar_t>(cores, p.channels) ? forward_planes(p) : PlaneTensors{};
      auto a = pn::ptrs<scalar_t, acc_t<scalar_t>>(p);
      a.out = y.mutable_data_ptr<scalar_t>();
      a.lse = lse.mutable_data_ptr<acc_t<scalar_t>>();
      launch_forward<scalar_t>(a, cores, planes.buffers, stream);
    });
  }
  return {y.view(g.sizes()), lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_y, const at::Tensor& theta,
                                                               const at::Tensor& phi, const at::Tensor& g,
                                                               const at::Tensor& y, const at::Tensor& lse,
                                                               double scale, bool tensor_cores,
                                                               cudaStream_t stream) {
  const auto p = pn::prepare_backward(grad_y, theta, phi, g, y, lse, scale);
  at::Tensor grad_theta = at::empty_like(p.theta), grad_phi = at::empty_like(p.phi), grad_g = at::empty_like(p.g);
  if (p.batch > 0 && p.positions > 0) {
    at::Tensor row_dot = at::empty({row_dot_parts(p.channels), p.batch, p.positions}, p.lse.options());
    const TensorCores cores = tensor_cores_for(tensor_cores);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.theta.scalar_type(), "nlm_gaussian_backward", [&] {
      // the SIMT backward's p and ds planes, in the accumulation type (none on tensor cores)
      const PlaneTensors planes =
          use_tensor_cores<scalar_t>(cores) ? PlaneTensors{} : backward_planes(p);
      auto a = pn::ptrs<scalar_t, acc_t<scalar_t>>(p);
      a.lse = p.lse.data_ptr<acc_t<scalar_t>>();
      a.row_dot = row_dot.mutable_data_ptr<acc_t<scalar_t>>();
      a.grad_theta = grad_theta.mutable_data_ptr<scalar_t>();
      a.grad_phi = grad_phi.mutable_data_ptr<scalar_t>();
      a.grad_g = grad_g.mutable_data_ptr<scalar_t>();
      launch_backward<scalar_t>(a, cores, planes.buffers, stream);
    });
  }
  return {grad_theta.view(theta.sizes()), grad_phi.view(phi.sizes()), grad_g.view(g.sizes())};
}

}  // namespace nlm
}  // namespace FR_KERNEL_NS
}  // namespace fastrobust
