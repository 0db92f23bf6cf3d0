// Kernels that exercise the CUDA emulator's own machinery (shared memory, barriers, warp
// shuffles and ballots, atomics, several blocks, partial warps, dynamic shared memory and its
// opt-in), registered as
// fastrobust_emu::_selftest_block_sum so that tests/test_emulator.py can check them.
#define FR_CUDA_EMULATION 1
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>

#include "../common/checks.h"
#include "../common/cuda_utils.cuh"
#include "../common/cp_async.cuh"
#include "../common/mma.cuh"
#include "../common/wmma.cuh"

namespace fastrobust {
namespace emu {
namespace {

// Sum of the calling warp's values over its live lanes (the last warp may be partial).
__device__ float warp_partial_sum(float v, int live) {
  const unsigned mask = live == kWarpSize ? 0xffffffffu : ((1u << live) - 1u);
  const int lane = threadIdx.x % kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const float other = __shfl_down_sync(mask, v, offset);
    if (lane + offset < live) v += other;
  }
  return v;
}

// Each block sums a contiguous chunk of x.
//   use_shuffles = 1: warp shuffles, then one value per warp through a static shared array;
//   use_shuffles = 0: a tree over dynamic shared memory, with a barrier per level.
// Writes the per-block sum, adds it to *total with one atomic per block, and counts the
// positive entries with warp ballots.
__global__ void block_sum_kernel(const float* x, int64_t n, int64_t chunk, int use_shuffles,
                                 float* block_sums, float* total, int* positives) {
  const int64_t start = int64_t(blockIdx.x) * chunk;
  const int64_t stop = start + chunk < n ? start + chunk : n;
  float v = 0.f;
  int pos = 0;
  for (int64_t i = start + threadIdx.x; i < stop; i += blockDim.x) {
    v += x[i];
    pos += x[i] > 0.f;
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int nwarps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  const int live = blockDim.x - warp * kWarpSize < kWarpSize ? blockDim.x - warp * kWarpSize
                                                               : kWarpSize;
  float sum;
  if (use_shuffles) {
    FR_SHARED(float, warp_sums, 32);
    v = warp_partial_sum(v, live);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    sum = 0.f;
    if (warp == 0) {
      float w = lane < nwarps ? warp_sums[lane] : 0.f;
      sum = warp_partial_sum(w, live);
    }
  } else {
    FR_DYNAMIC_SMEM(float, partial);
    partial[threadIdx.x] = v;
    __syncthreads();
    unsigned width = 1;
    while (width < blockDim.x) width *= 2;
    for (unsigned s = width / 2; s > 0; s /= 2) {
      if (threadIdx.x < s && threadIdx.x + s < blockDim.x) partial[threadIdx.x] += partial[threadIdx.x + s];
      __syncthreads();
    }
    sum = partial[0];
  }
  const unsigned mask = live == kWarpSize ? 0xffffffffu : ((1u << live) - 1u);
  // Each lane votes once per positive entry it saw; __popc of the ballot counts the lanes
  // that still have a vote left, repeated until no lane has one.
  for (;;) {
    const unsigned ballot = __ballot_sync(mask, pos > 0);
    if (ballot == 0) break;
    if (lane == 0) atomicAdd(positives, __popc(ballot));
    pos -= pos > 0;
  }
  if (threadIdx.x == 0) {
    block_sums[blockIdx.x] = sum;
    atomicAdd(total, sum);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> selftest_block_sum(const at::Tensor& x,
                                                                  int64_t block,
                                                                  int64_t chunk,
                                                                  bool use_shuffles) {
  FR_CHECK_DIM(x, "x", 1);
  FR_CHECK(x.scalar_type() == at::kFloat, "x must be float32, got ", x.scalar_type());
  FR_CHECK(chunk > 0, "chunk must be positive, got ", chunk);
  const at::Tensor xc = x.contiguous();
  const int64_t blocks = std::max<int64_t>(1, ceil_div<int64_t>(xc.numel(), chunk));
  at::Tensor sums = at::empty({blocks}, xc.options());
  at::Tensor total = at::zeros({1}, xc.options());
  at::Tensor positives = at::zeros({1}, xc.options().dtype(at::kInt));
  auto kernel = block_sum_kernel;
  FR_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(block)),
            use_shuffles ? 0 : block * sizeof(float), nullptr, xc.const_data_ptr<float>(),
            xc.numel(), chunk, use_shuffles ? 1 : 0, sums.mutable_data_ptr<float>(),
            total.mutable_data_ptr<float>(), positives.mutable_data_ptr<int>());
  return {sums, total, positives};
}

// The order the emulator runs the blocks of a grid in: block b's thread 0 appends b.
__global__ void block_order_kernel(int64_t* order, int* count) {
  if (threadIdx.x == 0) order[atomicAdd(count, 1)] = blockIdx.x;
}

at::Tensor selftest_block_order(int64_t blocks) {
  FR_CHECK(blocks > 0 && blocks <= 65535, "blocks must be in [1, 65535], got ", blocks);
  at::Tensor order = at::full({blocks}, -1, at::TensorOptions().dtype(at::kLong));
  at::Tensor count = at::zeros({1}, at::TensorOptions().dtype(at::kInt));
  FR_LAUNCH(block_order_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kWarpSize), 0, nullptr,
            order.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int>());
  return order;
}

// One warp: c = A B + 1 for A (16 x k) and B (k x 16) read from a and b with the layouts LA,
// LB, stored row- or column-major; bf16 tiles (k = 16) or float tiles as tf32 (k = 8, each
// element rounded with __float_to_tf32 unless round_tf32 is false). The ldm is ld.
template <typename scalar_t, typename LA, typename LB>
__global__ void wmma_product_kernel(const scalar_t* a, const scalar_t* b, float* c, unsigned ld, int c_col_major,
                                    int round_tf32) {
  WmmaA<scalar_t, LA> fa;
  WmmaB<scalar_t, LB> fb;
  WmmaAcc<scalar_t> acc;
  if (round_tf32) {
    load_operand<scalar_t>(fa, a, ld);
    load_operand<scalar_t>(fb, b, ld);
  } else {
    wmma::load_matrix_sync(fa, a, ld);
    wmma::load_matrix_sync(fb, b, ld);
  }
  wmma::fill_fragment(acc, 1.f);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(c, acc, kWmmaDim, c_col_major ? wmma::mem_col_major : wmma::mem_row_major);
}

template <typename scalar_t>
void launch_wmma_product(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool a_col_major,
                         bool b_col_major, bool c_col_major, unsigned ld, bool round_tf32) {
  const auto* pa = a.const_data_ptr<scalar_t>();
  const auto* pb = b.const_data_ptr<scalar_t>();
  float* pc = c.mutable_data_ptr<float>();
  const int cc = c_col_major ? 1 : 0, rt = round_tf32 ? 1 : 0;
  using R = wmma::row_major;
  using C = wmma::col_major;
  if (a_col_major && b_col_major) {
    FR_LAUNCH((wmma_product_kernel<scalar_t, C, C>), dim3(1), dim3(kWarpSize), 0, nullptr, pa, pb, pc, ld, cc, rt);
  } else if (a_col_major) {
    FR_LAUNCH((wmma_product_kernel<scalar_t, C, R>), dim3(1), dim3(kWarpSize), 0, nullptr, pa, pb, pc, ld, cc, rt);
  } else if (b_col_major) {
    FR_LAUNCH((wmma_product_kernel<scalar_t, R, C>), dim3(1), dim3(kWarpSize), 0, nullptr, pa, pb, pc, ld, cc, rt);
  } else {
    FR_LAUNCH((wmma_product_kernel<scalar_t, R, R>), dim3(1), dim3(kWarpSize), 0, nullptr, pa, pb, pc, ld, cc, rt);
  }
}

at::Tensor selftest_wmma(const at::Tensor& a, const at::Tensor& b, bool a_col_major, bool b_col_major,
                         bool c_col_major, int64_t ld, bool round_tf32) {
  FR_CHECK(a.scalar_type() == b.scalar_type() &&
               (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kFloat),
           "a and b must be both bfloat16 or both float32");
  FR_CHECK(a.is_contiguous() && b.is_contiguous(), "a and b must be contiguous");
  FR_CHECK(a.numel() >= 16 * ld && b.numel() >= 16 * ld, "a and b need 16 rows of ld elements");
  at::Tensor c = at::empty({kWmmaDim, kWmmaDim}, a.options().dtype(at::kFloat));
  const unsigned l = static_cast<unsigned>(ld);
  if (a.scalar_type() == at::kFloat)
    launch_wmma_product<float>(a, b, c, a_col_major, b_col_major, c_col_major, l, round_tf32);
  else
    launch_wmma_product<c10::BFloat16>(a, b, c, a_col_major, b_col_major, c_col_major, l, round_tf32);
  return c;
}

// One warp: d = A B + c for A (16 x 16), B (16 x 8) and c (16 x 8), all row-major, through
// mma_m16n8k16: each lane loads and stores its registers as the PTX ISA lays them out
// (g = lane / 4, t = lane % 4; csrc/emu/mma_emu.h), so a product that matches A B + c shows
// that the emulated instruction follows that layout.
template <typename scalar_t>
__global__ void mma_product_kernel(const scalar_t* a, const scalar_t* b, const float* c, float* d) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  const auto A = [&](int r, int k) { return a[r * 16 + k]; };
  const auto B = [&](int k, int col) { return b[k * 8 + col]; };
  const uint32_t ra[4] = {pack_pair(A(g, 2 * t), A(g, 2 * t + 1)), pack_pair(A(g + 8, 2 * t), A(g + 8, 2 * t + 1)),
                          pack_pair(A(g, 2 * t + 8), A(g, 2 * t + 9)),
                          pack_pair(A(g + 8, 2 * t + 8), A(g + 8, 2 * t + 9))};
  const uint32_t rb[2] = {pack_pair(B(2 * t, g), B(2 * t + 1, g)), pack_pair(B(2 * t + 8, g), B(2 * t + 9, g))};
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  mma_m16n8k16<scalar_t>(acc, ra, rb);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// The same for mma_m16n8k8_tf32: A (16 x 8) and B (8 x 8) of floats, each rounded with
// tf32_bits where round_tf32 (else passed as they are, which the emulator must refuse).
__global__ void mma_tf32_product_kernel(const float* a, const float* b, const float* c, float* d, bool round_tf32) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  const auto reg = [&](float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return round_tf32 ? tf32_bits(v) : bits;
  };
  const auto A = [&](int r, int k) { return reg(a[r * 8 + k]); };
  const auto B = [&](int k, int col) { return reg(b[k * 8 + col]); };
  const uint32_t ra[4] = {A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4)};
  const uint32_t rb[2] = {B(t, g), B(t + 4, g)};
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  mma_m16n8k8_tf32(acc, ra, rb);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

at::Tensor selftest_mma(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool round_tf32) {
  FR_CHECK(a.scalar_type() == b.scalar_type() && (a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf ||
                                                  a.scalar_type() == at::kFloat),
           "a and b must be both bfloat16, both float16 or both float32 (tf32)");
  FR_CHECK(c.scalar_type() == at::kFloat, "c must be float32");
  FR_CHECK(a.is_contiguous() && b.is_contiguous() && c.is_contiguous(), "a, b and c must be contiguous");
  const int64_t k = a.scalar_type() == at::kFloat ? 8 : 16;
  FR_CHECK(a.numel() == 16 * k && b.numel() == k * 8 && c.numel() == 16 * 8, "a must have 16 x ", k,
           " elements, b ", k, " x 8, c 16 x 8");
  at::Tensor d = at::empty({16, 8}, c.options());
  if (a.scalar_type() == at::kFloat)
    FR_LAUNCH(mma_tf32_product_kernel, dim3(1), dim3(kWarpSize), 0, nullptr, a.const_data_ptr<float>(),
              b.const_data_ptr<float>(), c.const_data_ptr<float>(), d.mutable_data_ptr<float>(), round_tf32);
  else if (a.scalar_type() == at::kHalf)
    FR_LAUNCH(mma_product_kernel<c10::Half>, dim3(1), dim3(kWarpSize), 0, nullptr, a.const_data_ptr<c10::Half>(),
              b.const_data_ptr<c10::Half>(), c.const_data_ptr<float>(), d.mutable_data_ptr<float>());
  else
    FR_LAUNCH(mma_product_kernel<c10::BFloat16>, dim3(1), dim3(kWarpSize), 0, nullptr,
              a.const_data_ptr<c10::BFloat16>(), b.const_data_ptr<c10::BFloat16>(), c.const_data_ptr<float>(),
              d.mutable_data_ptr<float>());
  return d;
}

// One warp: lane l copies floats 4l .. 4l + 3 of src (src_bytes of them, zeros after) into
// shared memory with cp.async, waits, meets the block, and writes out floats l, l + 32, l + 64
// and l + 96 (other lanes' copies; conflict-free reads).
__global__ void cp_async_kernel(const float* src, float* out, int src_bytes) {
  FR_SHARED_ALIGNED(16, float, s, 4 * kWarpSize);
  const int lane = static_cast<int>(threadIdx.x);
  cp_async_16(s + 4 * lane, FR_GLOBAL(const float)(src + 4 * lane), src_bytes);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[i * kWarpSize + lane] = s[i * kWarpSize + lane];
}

at::Tensor selftest_cp_async(const at::Tensor& src, int64_t src_bytes) {
  FR_CHECK(src.scalar_type() == at::kFloat && src.is_contiguous() && src.numel() == 4 * kWarpSize,
           "src must be a contiguous float32 tensor of 128 elements");
  at::Tensor out = at::empty({4 * kWarpSize}, src.options());
  FR_LAUNCH(cp_async_kernel, dim3(1), dim3(kWarpSize), 0, nullptr, src.const_data_ptr<float>(),
            out.mutable_data_ptr<float>(), static_cast<int>(src_bytes));
  return out;
}

// Fills the launch's dynamic shared memory (count floats) and reads it back reversed: every
// byte of a large dynamic allocation is usable. kOptedIn: which of two kernels, one that never
// opts in and one that does, so that the opt-in (which lasts, as on a GPU) leaves the other as
// it was.
template <bool kOptedIn>
__global__ void dynamic_smem_kernel(float* out, int count) {
  FR_DYNAMIC_SMEM(float, buffer);
  for (int e = threadIdx.x; e < count; e += blockDim.x) buffer[e] = static_cast<float>(e);
  __syncthreads();
  for (int e = threadIdx.x; e < count; e += blockDim.x) out[e] = buffer[count - 1 - e];
}

// Launches dynamic_smem_kernel with `bytes` of dynamic shared memory; opt_in >= 0 first sets
// the opted-in kernel's cudaFuncAttributeMaxDynamicSharedMemorySize to it and launches that one.
at::Tensor selftest_dynamic_smem(int64_t bytes, int64_t opt_in) {
  FR_CHECK(bytes >= 4 && bytes % 4 == 0, "bytes must be a positive multiple of 4, got ", bytes);
  at::Tensor out = at::empty({bytes / 4}, at::TensorOptions().dtype(at::kFloat));
  const auto count = static_cast<int>(bytes / 4);
  const auto smem = static_cast<size_t>(bytes);
  if (opt_in >= 0) {
    FR_OPT_IN_DYNAMIC_SMEM(dynamic_smem_kernel<true>, static_cast<size_t>(opt_in));
    FR_LAUNCH(dynamic_smem_kernel<true>, dim3(1), dim3(256), smem, nullptr, out.mutable_data_ptr<float>(), count);
  } else {
    FR_LAUNCH(dynamic_smem_kernel<false>, dim3(1), dim3(256), smem, nullptr, out.mutable_data_ptr<float>(), count);
  }
  return out;
}

}  // namespace
}  // namespace emu

TORCH_LIBRARY_FRAGMENT(fastrobust_emu, m) {
  m.def("_selftest_dynamic_smem(int bytes, int opt_in) -> Tensor");
  m.def("_selftest_block_sum(Tensor x, int block, int chunk, bool use_shuffles) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("_selftest_wmma(Tensor a, Tensor b, bool a_col_major, bool b_col_major, bool c_col_major, int ld, "
        "bool round_tf32=True) -> Tensor");
  m.def("_selftest_mma(Tensor a, Tensor b, Tensor c, bool round_tf32=True) -> Tensor");
  m.def("_selftest_cp_async(Tensor src, int src_bytes) -> Tensor");
  m.def("_selftest_block_order(int blocks) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CPU, m) {
  m.impl("_selftest_block_sum", &emu::selftest_block_sum);
  m.impl("_selftest_wmma", &emu::selftest_wmma);
  m.impl("_selftest_mma", &emu::selftest_mma);
  m.impl("_selftest_cp_async", &emu::selftest_cp_async);
}

TORCH_LIBRARY_IMPL(fastrobust_emu, CatchAll, m) {
  m.impl("_selftest_block_order", &emu::selftest_block_order);
  m.impl("_selftest_dynamic_smem", &emu::selftest_dynamic_smem);
}

}  // namespace fastrobust
