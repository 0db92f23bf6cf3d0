// Margin losses, CPU backend: one pass over each row's logits collects the statistics of
// csrc/kernels/margin_loss.h; the backward writes the row's gradient (zero but at the
// few classes the loss depends on). Rows are split across threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>

#include "../kernels/margin_loss.h"
#include "../ops/margin_loss.h"

namespace fastrobust {
namespace {

using namespace margin;

template <typename T> struct cpu_acc { using type = float; };
template <> struct cpu_acc<double> { using type = double; };

template <typename scalar_t, typename acc>
Terms<acc> row_terms(const MarginPtrs<scalar_t, acc>& p, int64_t row) {
  const scalar_t* z = p.logits + row * p.classes;
  const int y = static_cast<int>(p.labels[row]);
  const int t = p.targets ? static_cast<int>(p.targets[row]) : kNoClass;
  const int excluded = p.excluded(row);
  RowStats<acc> s;
  for (int c = 0; c < p.classes; ++c) s.push(acc(z[c]), c, excluded);
  s.z_y = acc(z[y]);
  if (p.targets) s.z_t = acc(z[t]);
  return terms(p.kind, p.targets != nullptr, s, y, t, p.kappa);
}

at::Tensor margin_loss_cpu(const at::Tensor& logits, const at::Tensor& labels,
                           const std::optional<at::Tensor>& targets, c10::string_view kind, double kappa) {
  const Prepared p = prepare(logits, labels, targets, kind, kappa);
  at::Tensor loss = at::empty({logits.size(0)}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto ptr = ptrs<scalar_t, acc>(p, loss);
    at::parallel_for(0, ptr.rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) ptr.out[row] = row_terms(ptr, row).loss;
    });
  });
  return loss;
}

at::Tensor margin_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                    const at::Tensor& labels, const std::optional<at::Tensor>& targets,
                                    c10::string_view kind, double kappa) {
  const Prepared p = prepare_backward(grad_loss, logits, labels, targets, kind, kappa);
  at::Tensor grad = at::empty_like(p.logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "margin_loss_backward", [&] {
    using acc = typename cpu_acc<scalar_t>::type;
    const auto ptr = ptrs<scalar_t, acc>(p, grad);
    at::parallel_for(0, ptr.rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const Terms<acc> tm = row_terms(ptr, row);
        const acc g = ptr.grad_loss[row];
        scalar_t* out = ptr.out + row * ptr.classes;
        for (int c = 0; c < ptr.classes; ++c) out[c] = g * coefficient(tm, c);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrobust, CPU, m) {
  m.impl("margin_loss", &margin_loss_cpu);
  m.impl("_margin_loss_backward", &margin_loss_backward_cpu);
}

}  // namespace fastrobust
