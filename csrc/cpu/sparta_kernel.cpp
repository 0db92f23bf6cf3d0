// Sparta CPU backend: one work item per (image, channel) plane, parallel with
// at::parallel_for. Each plane is converted once to the accumulation type, the depthwise
// conv is applied one tap at a time over whole rows, and the per-element maths comes from
// csrc/kernels/sparta.h, the same functions the CUDA kernels call (with the vectorisable
// PolyExp). Every inner loop is written so that the compiler vectorises it, and the
// per-plane functions are multiversioned for AVX-512 / AVX2 / baseline (cpu/vectorize.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../kernels/sparta.h"
#include "../ops/sparta.h"
#include "vectorize.h"

namespace fastrobust {
namespace {

using Exp = math::PolyExp;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

struct Plane {
  int64_t H, W;
  int k;
  int64_t size() const { return H * W; }
};

// Per-thread buffers, reused across the planes a thread handles.
template <typename acc>
struct Scratch {
  std::vector<acc> x, grad_y, z, grad_z, grad_x, weight;
};

// Calls f(h_begin, h_end, w_begin, w_end, dh, dw, tap) for every tap of the k x k kernel,
// with the output rows/cols for which the tap's input position (h+dh, w+dw) is in the plane.
template <typename F>
inline void for_each_tap(const Plane& p, F&& f) {
  const int r = p.k / 2;
  for (int i = 0; i < p.k; ++i)
    for (int j = 0; j < p.k; ++j) {
      const int64_t dh = i - r, dw = j - r;
      f(std::max<int64_t>(0, -dh), std::min<int64_t>(p.H, p.H - dh), std::max<int64_t>(0, -dw),
        std::min<int64_t>(p.W, p.W - dw), dh, dw, i * p.k + j);
    }
}

// z = bias + depthwise conv of xf (zero padding), over one plane.
template <typename acc>
inline void gate_preactivation(const acc* xf, const acc* wk, acc bias, acc* z, const Plane& p) {
  std::fill(z, z + p.size(), bias);
  for_each_tap(p, [&](int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t dh, int64_t dw,
                      int tap) {
    const acc wt = wk[tap];
    for (int64_t h = h0; h < h1; ++h) {
      acc* __restrict__ zr = z + h * p.W;
      const acc* __restrict__ xr = xf + (h + dh) * p.W + dw;
      for (int64_t w = w0; w < w1; ++w) zr[w] += wt * xr[w];
    }
  });
}

// The plane as acc values: the input itself when it already is acc, else a converted copy.
template <typename scalar_t, typename acc>
inline const acc* as_acc(const scalar_t* src, int64_t n, std::vector<acc>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    return src;
  } else {
    buf.resize(n);
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc>(src[i]);
    return buf.data();
  }
}

template <typename scalar_t, typename acc>
inline const acc* load_weights(const scalar_t* w, int taps, std::vector<acc>& buf) {
  buf.resize(taps);
  for (int t = 0; t < taps; ++t) buf[t] = static_cast<acc>(w[t]);
  return buf.data();
}

template <typename scalar_t>
FR_CPU_MULTIVERSION void forward_plane(const scalar_t* x, const scalar_t* weight, scalar_t bias,
                                       scalar_t* y, Plane p,
                                       Scratch<typename cpu_acc<scalar_t>::type>& s) {
  using acc = typename cpu_acc<scalar_t>::type;
  const int64_t n = p.size();
  const acc* wk = load_weights(weight, p.k * p.k, s.weight);
  const acc* xf = as_acc<scalar_t, acc>(x, n, s.x);
  s.z.resize(n);
  acc* __restrict__ zy = s.z.data();  // z, then y in place
  gate_preactivation(xf, wk, static_cast<acc>(bias), zy, p);
  for (int64_t i = 0; i < n; ++i) zy[i] = sparta::forward<acc, Exp>(xf[i], zy[i]);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<scalar_t>(zy[i]);
}

// Writes dL/dx of the plane and its partial dL/dw (taps) and dL/db (last) into `partial`.
template <typename scalar_t>
FR_CPU_MULTIVERSION void backward_plane(const scalar_t* grad_y, const scalar_t* x,
                                        const scalar_t* weight, scalar_t bias, scalar_t* grad_x,
                                        typename cpu_acc<scalar_t>::type* partial, Plane p,
                                        Scratch<typename cpu_acc<scalar_t>::type>& s) {
  using acc = typename cpu_acc<scalar_t>::type;
  const int64_t n = p.size();
  const int taps = p.k * p.k;
  const acc* wk = load_weights(weight, taps, s.weight);
  const acc* xf = as_acc<scalar_t, acc>(x, n, s.x);
  const acc* gyf = as_acc<scalar_t, acc>(grad_y, n, s.grad_y);
  s.z.resize(n);
  s.grad_z.resize(n);
  s.grad_x.resize(n);
  acc* __restrict__ z = s.z.data();
  acc* __restrict__ gz = s.grad_z.data();
  acc* __restrict__ gx = s.grad_x.data();
  gate_preactivation(xf, wk, static_cast<acc>(bias), z, p);
  for (int64_t i = 0; i < n; ++i) {
    const auto g = sparta::backward<acc, Exp>(xf[i], z[i], gyf[i]);
    gx[i] = g.dx;
    gz[i] = g.dz;
  }
  partial[taps] = cpu::sum(gz, n);
  for_each_tap(p, [&](int64_t h0, int64_t h1, int64_t w0, int64_t w1, int64_t dh, int64_t dw,
                      int tap) {
    const acc wt = wk[tap];
    acc gw = acc(0);
    for (int64_t h = h0; h < h1; ++h) {
      const acc* __restrict__ gzr = gz + h * p.W;
      gw += cpu::dot(gzr + w0, xf + (h + dh) * p.W + dw + w0, w1 - w0);
      acc* __restrict__ gxr = gx + (h + dh) * p.W + dw;
      for (int64_t w = w0; w < w1; ++w) gxr[w] += wt * gzr[w];
    }
    partial[tap] = gw;
  });
  for (int64_t i = 0; i < n; ++i) grad_x[i] = static_cast<scalar_t>(gx[i]);
}

int64_t grain_for(const Plane& p) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.size() * p.k * p.k));
}

at::Tensor sparta_cpu(const at::Tensor& x_, const at::Tensor& weight_, const at::Tensor& bias_) {
  check_sparta_args(x_, weight_, bias_);
  const at::Tensor x = x_.contiguous(), weight = weight_.contiguous(), bias = bias_.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const int64_t C = x.size(1);
  const Plane p{x.size(2), x.size(3), static_cast<int>(weight.size(2))};
  const int64_t n = p.size(), taps = int64_t(p.k) * p.k;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0) * C, grain_for(p), [&](int64_t begin, int64_t end) {
      Scratch<typename cpu_acc<scalar_t>::type> scratch;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        forward_plane<scalar_t>(xp + plane * n, wp + c * taps, bp[c], yp + plane * n, p, scratch);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparta_backward_cpu(const at::Tensor& grad_y_,
                                                                   const at::Tensor& x_,
                                                                   const at::Tensor& weight_,
                                                                   const at::Tensor& bias_) {
  check_sparta_backward_args(grad_y_, x_, weight_, bias_);
  const at::Tensor grad_y = grad_y_.contiguous(), x = x_.contiguous();
  const at::Tensor weight = weight_.contiguous(), bias = bias_.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const Plane p{x.size(2), x.size(3), static_cast<int>(weight.size(2))};
  const int64_t n = p.size(), taps = int64_t(p.k) * p.k;
  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  at::Tensor grad_b = at::empty_like(bias, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparta_backward_cpu", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const scalar_t* gyp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    // Per-plane partial sums of dL/dw (taps) and dL/db, reduced over the batch afterwards in a
    // fixed order: the result does not depend on the thread count.
    std::vector<acc> partial(B * C * (taps + 1), acc(0));
    at::parallel_for(0, B * C, grain_for(p), [&](int64_t begin, int64_t end) {
      Scratch<acc> scratch;
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        backward_plane<scalar_t>(gyp + plane * n, xp + plane * n, wp + c * taps, bp[c],
                                 gxp + plane * n, partial.data() + plane * (taps + 1), p, scratch);
      }
    });
    scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = grad_b.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        for (int64_t t = 0; t <= taps; ++t) {
          acc s = acc(0);
          for (int64_t b = 0; b < B; ++b) s += partial[(b * C + c) * (taps + 1) + t];
          (t < taps ? gwp[c * taps + t] : gbp[c]) = static_cast<scalar_t>(s);
        }
    });
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("sparta", &sparta_cpu);
  m.impl("_sparta_backward", &sparta_backward_cpu);
}

}  // namespace fastrobust
