// CIFS reweighting, CPU backend: one sample per task (at::parallel_for over the batch); the
// channel mask is computed once per sample into a small buffer, then each channel's
// spatial row is scaled (forward) or scaled and dotted with the feature (backward).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "../common/checks.h"
#include "../kernels/cifs.h"
#include "../ops/cifs.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using namespace cifs;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

// p = softmax(r / T) of one sample's relevance row, into p[0 .. C).
template <typename acc>
FR_CPU_MULTIVERSION void softmax_row(const acc* __restrict__ r, int64_t channels, acc temperature,
                                     acc* __restrict__ p) {
  acc max_z = -std::numeric_limits<acc>::infinity();
  for (int64_t c = 0; c < channels; ++c) max_z = std::max(max_z, logit(r[c], temperature));
  for (int64_t c = 0; c < channels; ++c) p[c] = shifted_exp<acc, math::PolyExp>(r[c], temperature, max_z);
  acc sum = 0;
  for (int64_t c = 0; c < channels; ++c) sum += p[c];
  const acc inv_sum = acc(1) / sum;
  for (int64_t c = 0; c < channels; ++c) p[c] *= inv_sum;
}

// The backward converts reduced-precision rows to acc a block of channels at a time
// (cpu::convert, vectorised), computes in acc and converts back: blocks of at most this many
// values (one channel where its row alone is longer), so that the three staging buffers stay
// in L1 (the bfloat16 backward at B32 C512 4x4 took 183-191 us with blocks of 1024 values,
// 203-204 us with 4096, single-threaded on an AMD EPYC).
constexpr int64_t kStagedValues = 1024;

// Buffers of the staged blocks, one set per parallel task.
template <typename acc>
struct Staging {
  std::vector<acc> feat, grad_out, out;
};

template <typename scalar_t>
constexpr bool kStaged = !std::is_same_v<scalar_t, typename cpu_acc<scalar_t>::type>;

// Calls body(c0, c1) over blocks of channels [c0, c1) of at most kStagedValues values (one
// block when nothing is staged).
template <typename scalar_t, typename F>
inline void for_each_channel_block(int64_t channels, int64_t spatial, F&& body) {
  const int64_t block = kStaged<scalar_t> ? std::max<int64_t>(1, kStagedValues / std::max<int64_t>(spatial, 1))
                                          : channels;
  for (int64_t c0 = 0; c0 < channels; c0 += block) body(c0, std::min(channels, c0 + block));
}

// The n values at `rows` as acc: themselves, or their conversion into `buf`.
template <typename scalar_t, typename acc>
inline const acc* rows_as_acc(const scalar_t* rows, int64_t n, std::vector<acc>& buf) {
  if constexpr (kStaged<scalar_t>) {
    buf.resize(n);
    cpu::convert(rows, buf.data(), n);
    return buf.data();
  } else {
    return rows;
  }
}

// Where the n acc results for `rows` go before store_rows: `rows` itself, or `buf`.
template <typename scalar_t, typename acc>
inline acc* rows_out(scalar_t* rows, int64_t n, std::vector<acc>& buf) {
  if constexpr (kStaged<scalar_t>) {
    buf.resize(n);
    return buf.data();
  } else {
    return rows;
  }
}

template <typename scalar_t, typename acc>
inline void store_rows(scalar_t* rows, int64_t n, const std::vector<acc>& buf) {
  if constexpr (kStaged<scalar_t>) cpu::convert(buf.data(), rows, n);
}

// One sample of the forward: out rows = feat rows * mask[c]. One pass; bfloat16 through its
// bits (cpu::bfloat16_bits_to_float and back), which vectorises where c10's conversions do not.
template <typename scalar_t>
FR_CPU_MULTIVERSION void scale_rows(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                    const typename cpu_acc<scalar_t>::type* mask, int64_t channels,
                                    int64_t spatial) {
  using acc = typename cpu_acc<scalar_t>::type;
  for (int64_t c = 0; c < channels; ++c) {
    const acc m = mask[c];
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      const uint16_t* __restrict__ from = reinterpret_cast<const uint16_t*>(in) + c * spatial;
      uint16_t* __restrict__ to = reinterpret_cast<uint16_t*>(out) + c * spatial;
      for (int64_t i = 0; i < spatial; ++i)
        to[i] = cpu::float_to_bfloat16_bits(cpu::bfloat16_bits_to_float(from[i]) * m);
    } else {
      for (int64_t i = 0; i < spatial; ++i) out[c * spatial + i] = acc(in[c * spatial + i]) * m;
    }
  }
}

// grad_feat rows = grad_out rows * m_c (+ add[c] when add is given); d[c] = sum_hw grad_out *
// feat, kept in kDotLanes partial sums so that the loop vectorises without reassociating a
// single sum.
constexpr int kDotLanes = 8;

// One value as acc; bfloat16 through its bits (see scale_rows).
template <typename scalar_t>
inline typename cpu_acc<scalar_t>::type load_acc(const scalar_t* v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
    return cpu::bfloat16_bits_to_float(*reinterpret_cast<const uint16_t*>(v));
  else
    return static_cast<typename cpu_acc<scalar_t>::type>(*v);
}

template <typename acc>
inline void backward_rows_acc(const acc* __restrict__ grad_out, const acc* __restrict__ feat,
                              acc* __restrict__ grad_feat, const acc* mask, const acc* add, acc* d,
                              int64_t channels, int64_t spatial) {
  for (int64_t c = 0; c < channels; ++c) {
    const acc* g = grad_out + c * spatial;
    const acc* f = feat + c * spatial;
    acc* out = grad_feat + c * spatial;
    const acc m = mask[c], a = add != nullptr ? add[c] : acc(0);
    acc lane[kDotLanes] = {};
    int64_t i = 0;
    for (; i + kDotLanes <= spatial; i += kDotLanes)
      for (int l = 0; l < kDotLanes; ++l) {
        const acc gi = g[i + l];
        lane[l] += gi * f[i + l];
        out[i + l] = gi * m + a;
      }
    acc dot = 0;
    for (; i < spatial; ++i) {
      const acc gi = g[i];
      dot += gi * f[i];
      out[i] = gi * m + a;
    }
    for (int l = 0; l < kDotLanes; ++l) dot += lane[l];
    d[c] = dot;
  }
}

// One sample of the backward: grad_feat rows and the channel dots d.
template <typename scalar_t>
FR_CPU_MULTIVERSION void backward_rows(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ feat,
                                       scalar_t* __restrict__ grad_feat,
                                       const typename cpu_acc<scalar_t>::type* mask,
                                       const typename cpu_acc<scalar_t>::type* add,
                                       typename cpu_acc<scalar_t>::type* d, int64_t channels, int64_t spatial,
                                       Staging<typename cpu_acc<scalar_t>::type>& st) {
  for_each_channel_block<scalar_t>(channels, spatial, [&](int64_t c0, int64_t c1) {
    const int64_t first = c0 * spatial, n = (c1 - c0) * spatial;
    const auto* g = rows_as_acc(grad_out + first, n, st.grad_out);
    const auto* f = rows_as_acc(feat + first, n, st.feat);
    auto* o = rows_out(grad_feat + first, n, st.out);
    backward_rows_acc(g, f, o, mask + c0, add != nullptr ? add + c0 : nullptr, d + c0, c1 - c0, spatial);
    store_rows(grad_feat + first, n, st.out);
  });
}

at::Tensor cifs_reweight_cpu(const at::Tensor& feat, const at::Tensor& relevance, double temperature, double scale) {
  const Prepared p = prepare(feat, relevance, temperature, scale);
  at::Tensor out = at::empty_like(p.feat);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feat.scalar_type(), "cifs_reweight", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto a = ptrs<scalar_t, acc>(p, out, at::Tensor(), at::Tensor());
    at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
      std::vector<acc> mask(a.channels);
      for (int64_t b = b0; b < b1; ++b) {
        softmax_row(a.relevance + b * a.channels, a.channels, a.temperature, mask.data());
        for (acc& m : mask) m *= a.scale;
        const int64_t offset = b * a.channels * a.spatial;
        scale_rows(a.feat + offset, a.out + offset, mask.data(), a.channels, a.spatial);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cifs_reweight_backward_cpu(const at::Tensor& grad_out, const at::Tensor& feat,
                                                              const at::Tensor& relevance, double temperature,
                                                              double scale,
                                                              const std::optional<at::Tensor>& grad_pooled) {
  const Prepared p = prepare_backward(grad_out, feat, relevance, temperature, scale, grad_pooled);
  at::Tensor grad_feat = at::empty_like(p.feat);
  at::Tensor grad_relevance = at::empty_like(p.relevance);
  if (p.batch > 0 && p.channels > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.feat.scalar_type(), "cifs_reweight_backward", [&] {
      using acc = typename cpu_acc<scalar_t>::type;
      const auto a = ptrs<scalar_t, acc>(p, grad_feat, grad_relevance, at::Tensor());
      at::parallel_for(0, a.batch, 1, [&](int64_t b0, int64_t b1) {
        std::vector<acc> prob(a.channels), mask(a.channels), d(a.channels), add(a.grad_pooled ? a.channels : 0);
        Staging<acc> staging;
        for (int64_t b = b0; b < b1; ++b) {
          softmax_row(a.relevance + b * a.channels, a.channels, a.temperature, prob.data());
          for (int64_t c = 0; c < a.channels; ++c) mask[c] = a.scale * prob[c];
          if (a.grad_pooled != nullptr)
            for (int64_t c = 0; c < a.channels; ++c) add[c] = a.grad_pooled[b * a.channels + c] / acc(a.spatial);
          const int64_t offset = b * a.channels * a.spatial;
          backward_rows(a.grad_out + offset, a.feat + offset, a.out + offset, mask.data(),
                        a.grad_pooled != nullptr ? add.data() : nullptr, d.data(), a.channels, a.spatial, staging);
          acc p_dot_d = 0;
          for (int64_t c = 0; c < a.channels; ++c) p_dot_d += prob[c] * d[c];
          for (int64_t c = 0; c < a.channels; ++c)
            a.grad_relevance[b * a.channels + c] = relevance_grad(prob[c], d[c], p_dot_d, a.scale, a.temperature);
        }
      });
    });
  }
  return {grad_feat, grad_relevance.to(p.relevance_dtype)};
}

// The spatial means of `rows` rows of `spatial` contiguous values (NCHW): summed in acc in
// kDotLanes partial sums, divided once, rounded once. The portable path: one horizontal sum per
// row is its cost (some 35 us single-threaded at 16384 rows of 16 floats with AVX2, more with
// the AVX-512 clone), hence the AVX2 path below for float32 and bfloat16.
template <typename scalar_t>
FR_CPU_MULTIVERSION void row_means(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t rows,
                                   int64_t spatial) {
  using acc = typename cpu_acc<scalar_t>::type;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = in + r * spatial;
    acc lane[kDotLanes] = {};
    int64_t i = 0;
    for (; i + kDotLanes <= spatial; i += kDotLanes)
      for (int l = 0; l < kDotLanes; ++l) lane[l] += load_acc(row + i + l);
    acc sum = 0;
    for (; i < spatial; ++i) sum += load_acc(row + i);
    for (int l = 0; l < kDotLanes; ++l) sum += lane[l];
    out[r] = static_cast<scalar_t>(sum / acc(spatial));
  }
}

// Rows the AVX2 path reduces together, one per lane of a float vector.
constexpr int64_t kPoolRows = 8;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(FR_DEBUG)
#define FR_POOL_AVX2 1
// Eight values from p as floats; load8_part: n < 8 of them, the rest 0.
__attribute__((target("avx2"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2"))) inline __m256 load8(const c10::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
template <typename scalar_t>
__attribute__((target("avx2"))) inline __m256 load8_part(const scalar_t* p, int64_t n) {
  alignas(32) scalar_t v[8] = {};
  std::memcpy(v, p, sizeof(scalar_t) * n);
  return load8(v);
}

// Eight rows at a time: each row's values added eight lanes wide into one vector, then the
// eight vectors reduced together (three rounds of pairwise horizontal adds), so that a row
// costs no horizontal sum of its own. Same maths as row_means (float sums, one division, one
// rounding), another summation order.
template <typename scalar_t>
__attribute__((target("avx2"))) void row_means_avx2(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                                    int64_t rows, int64_t spatial) {
  const __m256 divisor = _mm256_set1_ps(static_cast<float>(spatial));
  const int64_t whole = spatial / 8 * 8, rest = spatial - whole;
  // a row's last `rest` values: eight loaded and the others masked off, where the eight are
  // among the rows given (every row but the last); copied out (load8_part) for the last
  const __m256 keep = _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rest)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  const scalar_t* end = in + rows * spatial;
  int64_t r = 0;
  for (; r + kPoolRows <= rows; r += kPoolRows) {
    __m256 v[kPoolRows];
    for (int k = 0; k < kPoolRows; ++k) {
      const scalar_t* row = in + (r + k) * spatial;
      __m256 sum = _mm256_setzero_ps();
      if (rest > 0)
        sum = row + whole + 8 <= end ? _mm256_and_ps(load8(row + whole), keep) : load8_part(row + whole, rest);
      for (int64_t i = 0; i < whole; i += 8) sum = _mm256_add_ps(sum, load8(row + i));
      v[k] = sum;
    }
    const __m256 q0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 q1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    // q0 holds rows 0-3 twice (from lanes 0-3 and 4-7), q1 rows 4-7
    const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
    alignas(32) float means[8];
    _mm256_store_ps(means, _mm256_div_ps(sums, divisor));
    for (int k = 0; k < 8; ++k) out[r + k] = static_cast<scalar_t>(means[k]);
  }
  if (r < rows) row_means(in + r * spatial, out + r, rows - r, spatial);
}
#endif

// Picks the AVX2 path where the CPU has it (float32 and bfloat16), row_means elsewhere.
template <typename scalar_t>
void spatial_row_means(const scalar_t* in, scalar_t* out, int64_t rows, int64_t spatial) {
#ifdef FR_POOL_AVX2
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) return row_means_avx2(in, out, rows, spatial);
  }
#endif
  row_means(in, out, rows, spatial);
}

// The same for channels_last samples (B, H W, C): each position's C values added into one
// accumulator row, which vectorises over the channels.
template <typename scalar_t>
FR_CPU_MULTIVERSION void position_means(const scalar_t* __restrict__ in, scalar_t* __restrict__ out,
                                        int64_t channels, int64_t spatial, typename cpu_acc<scalar_t>::type* sum) {
  using acc = typename cpu_acc<scalar_t>::type;
  std::fill(sum, sum + channels, acc(0));
  for (int64_t p = 0; p < spatial; ++p)
    for (int64_t c = 0; c < channels; ++c) sum[c] += load_acc(in + p * channels + c);
  for (int64_t c = 0; c < channels; ++c) out[c] = static_cast<scalar_t>(sum[c] / acc(spatial));
}

// Values per parallel task of the pooling: smaller problems run on the calling thread.
constexpr int64_t kPoolGrainValues = 1 << 15;

at::Tensor cifs_pool_cpu(const at::Tensor& feat) {
  FR_CHECK_DIM(feat, "feat", 4);
  FR_CHECK_FLOATING(feat, "feat");
  const int64_t batch = feat.size(0), channels = feat.size(1), spatial = feat.size(2) * feat.size(3);
  const bool channels_last = !feat.is_contiguous() && feat.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = channels_last ? feat : feat.contiguous();
  if (spatial == 0)  // the mean of nothing, as torch's
    return at::full({batch, channels}, std::numeric_limits<double>::quiet_NaN(), feat.options());
  at::Tensor out = at::empty({batch, channels}, feat.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "_cifs_pool", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (channels_last) {
      const int64_t grain = std::max<int64_t>(1, kPoolGrainValues / (channels * spatial));
      at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
        std::vector<typename cpu_acc<scalar_t>::type> sum(channels);
        for (int64_t b = b0; b < b1; ++b)
          position_means(in + b * channels * spatial, o + b * channels, channels, spatial, sum.data());
      });
    } else {
      // tasks of whole groups of kPoolRows rows: which rows the AVX2 path groups (and which
      // last few the portable path sums, in another order) does not depend on the threads
      const int64_t rows = batch * channels, groups = (rows + kPoolRows - 1) / kPoolRows;
      const int64_t grain = std::max<int64_t>(1, kPoolGrainValues / (spatial * kPoolRows));
      at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
        const int64_t r0 = g0 * kPoolRows, r1 = std::min(rows, g1 * kPoolRows);
        spatial_row_means(in + r0 * spatial, o + r0, r1 - r0, spatial);
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("cifs_reweight", &cifs_reweight_cpu);
  m.impl("_cifs_reweight_backward", &cifs_reweight_backward_cpu);
  m.impl("_cifs_pool", &cifs_pool_cpu);
}

}  // namespace fastrobust
