#pragma once
// The subset of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) that our kernels use, for the
// CPU emulator: m16n16k16 fragments of 16-bit inputs and m16n16k8 fragments of tf32 inputs
// (precision::tf32, stored as float), with float accumulators.
//
// On the hardware a fragment is spread over the warp's 32 lanes in an unspecified way. Here:
//   - matrix_a / matrix_b fragments hold the whole tile (16 x k, k x 16) in every lane, so
//     that each lane can form its share of a product alone;
//   - an accumulator holds 8 elements per lane, element i of lane l being entry
//     wmma_map[32 i + l] of the row-major 16x16 tile, a permutation drawn per launch from the
//     schedule's seed (sanitizer.h): code that touches x[] elementwise sees a consistent
//     mapping within a launch, as on the hardware, and code that assumes one mapping breaks.
// load/store/mma are warp-wide: all 32 lanes must call them at one place (synccheck). They
// check what the hardware leaves undefined: a pointer aligned to 32 bytes, a leading
// dimension that is a multiple of 16 bytes, and tf32 operands that were converted with
// __float_to_tf32 (a float with any of its 13 low mantissa bits set is not a tf32 value). A
// matrix_a / matrix_b load from shared memory is read (and checked for races and unwritten
// elements) once for the warp, attributed to its lane 0, since which lanes hold which element
// is unspecified; an accumulator load and store touch each lane's own elements. None of them
// orders memory between the lanes: a lane's stores before a load, or another lane's reads of
// a stored tile, still need __syncwarp().
#ifndef FR_CUDA_EMULATION
#error "wmma_emu.h is for the emulated build"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
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
namespace precision {
struct tf32 {};  // 19-bit floats (8-bit exponent, 10-bit mantissa) held in a float
}  // namespace precision

constexpr int kDim = 16;  // m = n = 16; k = 16 (16-bit inputs) or 8 (tf32)

// A fragment's element type: the input type, float for tf32.
template <typename T>
struct storage { using type = T; };
template <>
struct storage<precision::tf32> { using type = float; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment;

// An input tile, whole in every lane: x[r * kCols + c] is entry (r, c) of A (16 x K) or B (K x 16).
template <typename Use, int K, typename T, typename Layout>
struct fragment<Use, kDim, kDim, K, T, Layout> {
  static_assert(K == 16 || (K == 8 && std::is_same_v<T, precision::tf32>), "m16n16k16, or m16n16k8 for tf32");
  static constexpr int kRows = std::is_same_v<Use, matrix_a> ? kDim : K;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : kDim;
  static constexpr int num_elements = kRows * kCols;
  using element_type = typename storage<T>::type;
  element_type x[num_elements];
};

// The calling lane's share of a float accumulator tile (16 x 16 for either k).
template <int K>
struct fragment<accumulator, kDim, kDim, K, float, void> {
  static constexpr int num_elements = kDim * kDim / 32;
  using element_type = float;
  float x[num_elements];
};

// Rounds to the nearest tf32 value, ties away from zero (cvt.rna.tf32.f32): the low 13
// mantissa bits of the result are zero.
inline float __float_to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = (bits + 0x1000u) & ~0x1fffu;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

namespace detail {

inline unsigned lane() { return ::fr_emu::lane_id(); }
// Entry (row, col) of the accumulator tile held as x[i] by this lane.
inline int acc_entry(int i) { return ::fr_emu::launch_state().wmma_map[32 * i + static_cast<int>(lane())]; }
inline int acc_row(int i) { return acc_entry(i) / kDim; }
inline int acc_col(int i) { return acc_entry(i) % kDim; }

template <typename T>
const T* address(const T* p) { return p; }
template <typename T>
T* address(const ::fr_emu::SharedPtr<T>& p) { return p.raw(); }

template <typename P>
void check_operand(const P& p, unsigned ldm, const char* what) {
  using T = std::remove_const_t<std::remove_pointer_t<decltype(address(p))>>;
  if (reinterpret_cast<std::uintptr_t>(address(p)) % 32 != 0)
    throw std::runtime_error(std::string("emulated wmma ") + what + ": pointer not aligned to 32 bytes");
  if ((ldm * sizeof(T)) % 16 != 0)
    throw std::runtime_error(std::string("emulated wmma ") + what + ": ldm " + std::to_string(ldm) +
                             " is not a multiple of 16 bytes");
}

// The kRows x kCols tile at p (leading dimension ldm, row- or column-major) for every lane of
// the warp: lane 0 reads it (so a shared-memory source is checked once per load) into its own
// copy and publishes the copy's address in its exchange slot; the other lanes copy it once
// all have arrived, and lane 0 keeps it until they have. Two check-only warp phases.
template <int kRows, int kCols, typename T, typename P>
void read_tile(T (&tile)[kRows * kCols], const P& p, unsigned ldm, bool row_major) {
  static thread_local T staged[kRows * kCols];
  ::fr_emu::BlockState& s = ::fr_emu::block_state();
  const unsigned base = ::fr_emu::warp_id() * ::fr_emu::kWarp;
  if (lane() == 0) {
    ::fr_emu::note_mma_tile_load();
    const ::fr_emu::NotCounted not_the_warps_access;
    s.exchange[base] = 0;  // stays 0 if the read fails (a sanitizer error leaves the kernel)
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c) staged[r * kCols + c] = row_major ? T(p[r * ldm + c]) : T(p[c * ldm + r]);
    s.exchange[base] = reinterpret_cast<uint64_t>(&staged[0]);
  }
  ::fr_emu::warp_phase(false);
  const T* src = reinterpret_cast<const T*>(s.exchange[base]);
  if (src == nullptr)
    ::fr_emu::raise_sanitizer_error("emulated wmma load_matrix_sync: lane 0 of the warp failed to read the tile");
  std::memcpy(tile, src, sizeof(T) * kRows * kCols);
  ::fr_emu::warp_phase(false);
}

// The operand of a product as the tensor cores take it: 16-bit values as they are; a tf32
// operand must hold tf32 values (the hardware's result is undefined otherwise).
template <typename T, typename E>
float operand(E v) {
  if constexpr (std::is_same_v<T, precision::tf32>) {
    if (__float_to_tf32(v) != v && std::isfinite(v))
      ::fr_emu::raise_sanitizer_error(
          "emulated wmma mma_sync: a tf32 operand was not converted with __float_to_tf32 (value " +
          std::to_string(v) + ")");
  }
  return static_cast<float>(v);
}

}  // namespace detail

template <typename Use, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, kDim, kDim, K, T, Layout>& f, V v) {
  for (auto& e : f.x) e = static_cast<typename fragment<Use, kDim, kDim, K, T, Layout>::element_type>(v);
}

// A (m x k): row_major reads p[r * ldm + c], col_major p[c * ldm + r]; B (k x n) likewise.
// p: a pointer to global memory, or a checked shared-memory pointer.
template <typename Use, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, kDim, kDim, K, T, Layout>& f, const P& p, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<Use, kDim, kDim, K, T, Layout>;
  ::fr_emu::check_whole_warp("wmma::load_matrix_sync", file, line);
  detail::check_operand(p, ldm, "load_matrix_sync");
  detail::read_tile<F::kRows, F::kCols>(f.x, p, ldm, std::is_same_v<Layout, row_major>);
}

// An accumulator: each lane reads its own elements, the ones it will store (the mapping of
// loads and stores is the same, so a warp that loads, updates and stores its own tile needs no
// __syncwarp in between, as on the hardware).
template <int K, typename P>
void load_matrix_sync(fragment<accumulator, kDim, kDim, K, float, void>& f, const P& p, unsigned ldm,
                      layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::load_matrix_sync", file, line);
  detail::check_operand(p, ldm, "load_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int r = detail::acc_row(i), c = detail::acc_col(i);
    f.x[i] = p[layout == mem_row_major ? r * ldm + c : c * ldm + r];
  }
}

// Each lane writes its own elements.
template <int K, typename P>
void store_matrix_sync(const P& p, const fragment<accumulator, kDim, kDim, K, float, void>& f, unsigned ldm,
                       layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::store_matrix_sync", file, line);
  detail::check_operand(p, ldm, "store_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int r = detail::acc_row(i), c = detail::acc_col(i);
    p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[i];
  }
}

// d = a b + c with float products and sums (the hardware's order of summation differs).
template <int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, kDim, kDim, K, float, void>& d, const fragment<matrix_a, kDim, kDim, K, T, LayoutA>& a,
              const fragment<matrix_b, kDim, kDim, K, T, LayoutB>& b,
              const fragment<accumulator, kDim, kDim, K, float, void>& c, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::mma_sync", file, line);
  if (detail::lane() == 0) ::fr_emu::note_mma(K);
  for (int i = 0; i < d.num_elements; ++i) {
    const int r = detail::acc_row(i), col = detail::acc_col(i);
    float s = c.x[i];
    for (int k = 0; k < K; ++k) s += detail::operand<T>(a.x[r * K + k]) * detail::operand<T>(b.x[k * kDim + col]);
    d.x[i] = s;
  }
}

}  // namespace wmma
}  // namespace nvcuda
