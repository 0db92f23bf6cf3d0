#pragma once
// The subset of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) that our kernels use, for the
// CPU emulator: 16x16x16 fragments of 16-bit inputs with float accumulators.
//
// On the hardware a fragment is spread over the warp's 32 lanes in an unspecified way. Here:
//   - matrix_a / matrix_b fragments hold the whole 16x16 tile in every lane (x[256]), so that
//     each lane can form its share of a product alone;
//   - an accumulator holds 8 elements per lane, element i of lane l being entry
//     e = 32 i + l of the row-major 16x16 tile; code that touches x[] elementwise (the only
//     portable use) sees a consistent mapping, as on the hardware.
// load/store check what the hardware leaves undefined: a pointer aligned to 32 bytes and a
// leading dimension that is a multiple of 16 bytes. Loads copy the tile at the call, so a
// lane that loads before another lane's store was made visible (no __syncwarp) reads stale
// values, as on the GPU.
#ifndef FR_CUDA_EMULATION
#error "wmma_emu.h is for the emulated build"
#endif

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

constexpr int kDim = 16;  // the only shape emulated: m16n16k16

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment;

// An input tile, whole in every lane: x[r * 16 + c] is entry (r, c) of A (m x k) or B (k x n).
template <typename Use, typename T, typename Layout>
struct fragment<Use, kDim, kDim, kDim, T, Layout> {
  static constexpr int num_elements = kDim * kDim;
  using element_type = T;
  T x[num_elements];
};

// The calling lane's share of a float accumulator tile.
template <>
struct fragment<accumulator, kDim, kDim, kDim, float, void> {
  static constexpr int num_elements = kDim * kDim / 32;
  using element_type = float;
  float x[num_elements];
};

namespace detail {

inline unsigned lane() { return ::fr_emu::lane_id(); }
// Entry (row, col) of the accumulator tile held as x[i] by this lane.
inline int acc_row(int i) { return (32 * i + static_cast<int>(lane())) / kDim; }
inline int acc_col(int i) { return (32 * i + static_cast<int>(lane())) % kDim; }

template <typename T>
void check_operand(const T* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    throw std::runtime_error(std::string("emulated wmma ") + what + ": pointer not aligned to 32 bytes");
  if ((ldm * sizeof(T)) % 16 != 0)
    throw std::runtime_error(std::string("emulated wmma ") + what + ": ldm " + std::to_string(ldm) +
                             " is not a multiple of 16 bytes");
}

}  // namespace detail

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, kDim, kDim, kDim, T, Layout>& f, T v) {
  for (auto& e : f.x) e = v;
}
inline void fill_fragment(fragment<accumulator, kDim, kDim, kDim, float, void>& f, float v) {
  for (auto& e : f.x) e = v;
}

// A (m x k): row_major reads p[r * ldm + c], col_major p[c * ldm + r]; B (k x n) likewise.
template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, kDim, kDim, kDim, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_operand(p, ldm, "load_matrix_sync");
  constexpr bool kRowMajor = std::is_same_v<Layout, row_major>;
  for (int r = 0; r < kDim; ++r)
    for (int c = 0; c < kDim; ++c) f.x[r * kDim + c] = kRowMajor ? p[r * ldm + c] : p[c * ldm + r];
}

inline void load_matrix_sync(fragment<accumulator, kDim, kDim, kDim, float, void>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  detail::check_operand(p, ldm, "load_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int r = detail::acc_row(i), c = detail::acc_col(i);
    f.x[i] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, kDim, kDim, kDim, float, void>& f, unsigned ldm,
                              layout_t layout) {
  detail::check_operand(p, ldm, "store_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int r = detail::acc_row(i), c = detail::acc_col(i);
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
  }
}

// d = a b + c with float products and sums (the hardware's order of summation differs).
template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, kDim, kDim, kDim, float, void>& d,
              const fragment<matrix_a, kDim, kDim, kDim, T, LayoutA>& a,
              const fragment<matrix_b, kDim, kDim, kDim, T, LayoutB>& b,
              const fragment<accumulator, kDim, kDim, kDim, float, void>& c) {
  for (int i = 0; i < d.num_elements; ++i) {
    const int r = detail::acc_row(i), col = detail::acc_col(i);
    float s = c.x[i];
    for (int k = 0; k < kDim; ++k) s += static_cast<float>(a.x[r * kDim + k]) * static_cast<float>(b.x[k * kDim + col]);
    d.x[i] = s;
  }
}

}  // namespace wmma
}  // namespace nvcuda
