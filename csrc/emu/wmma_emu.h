#pragma once
// The subset of CUDA's warp matrix API (nvcuda::wmma, <mma.h>) that our kernels use, for the
// CPU emulator: 16x16x16 fragments of 16-bit inputs with float accumulators.
//
// On the hardware a fragment is spread over the warp's 32 lanes in an unspecified way. Here:
//   - matrix_a / matrix_b fragments hold the whole 16x16 tile in every lane (x[256]), so that
//     each lane can form its share of a product alone;
//   - an accumulator holds 8 elements per lane, element i of lane l being entry
//     wmma_map[32 i + l] of the row-major 16x16 tile, a permutation drawn per launch from the
//     schedule's seed (sanitizer.h): code that touches x[] elementwise sees a consistent
//     mapping within a launch, as on the hardware, and code that assumes one mapping breaks.
// load/store/mma are warp-wide: all 32 lanes must call them at one place (synccheck). They
// check what the hardware leaves undefined: a pointer aligned to 32 bytes and a leading
// dimension that is a multiple of 16 bytes. A matrix_a / matrix_b load from shared memory is
// read (and checked for races and unwritten elements) once for the warp, attributed to its
// lane 0, since which lanes hold which element is unspecified; an accumulator load and store
// touch each lane's own elements. None of them orders memory between the lanes: a lane's
// stores before a load, or another lane's reads of a stored tile, still need __syncwarp().
#ifndef FR_CUDA_EMULATION
#error "wmma_emu.h is for the emulated build"
#endif

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

// The 16 x 16 tile at p (leading dimension ldm, row- or column-major) for every lane of the
// warp: lane 0 reads it (so a shared-memory source is checked once per load) into its own
// copy and publishes the copy's address in its exchange slot; the other lanes copy it once
// all have arrived, and lane 0 keeps it until they have. Two check-only warp phases.
template <typename T, typename P>
void read_tile(T (&tile)[kDim * kDim], const P& p, unsigned ldm, bool row_major) {
  static thread_local T staged[kDim * kDim];
  ::fr_emu::BlockState& s = ::fr_emu::block_state();
  const unsigned base = ::fr_emu::warp_id() * ::fr_emu::kWarp;
  if (lane() == 0) {
    ::fr_emu::note_mma_tile_load();
    const ::fr_emu::NotCounted not_the_warps_access;
    s.exchange[base] = 0;  // stays 0 if the read fails (a sanitizer error leaves the kernel)
    for (int r = 0; r < kDim; ++r)
      for (int c = 0; c < kDim; ++c) staged[r * kDim + c] = row_major ? T(p[r * ldm + c]) : T(p[c * ldm + r]);
    s.exchange[base] = reinterpret_cast<uint64_t>(&staged[0]);
  }
  ::fr_emu::warp_phase(false);
  const T* src = reinterpret_cast<const T*>(s.exchange[base]);
  if (src == nullptr)
    ::fr_emu::raise_sanitizer_error("emulated wmma load_matrix_sync: lane 0 of the warp failed to read the tile");
  std::memcpy(tile, src, sizeof(T) * kDim * kDim);
  ::fr_emu::warp_phase(false);
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
// p: a pointer to global memory, or a checked shared-memory pointer.
template <typename Use, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, kDim, kDim, kDim, T, Layout>& f, const P& p, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::load_matrix_sync", file, line);
  detail::check_operand(p, ldm, "load_matrix_sync");
  detail::read_tile(f.x, p, ldm, std::is_same_v<Layout, row_major>);
}

// An accumulator: each lane reads its own elements, the ones it will store (the mapping of
// loads and stores is the same, so a warp that loads, updates and stores its own tile needs no
// __syncwarp in between, as on the hardware).
template <typename P>
void load_matrix_sync(fragment<accumulator, kDim, kDim, kDim, float, void>& f, const P& p, unsigned ldm,
                      layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::load_matrix_sync", file, line);
  detail::check_operand(p, ldm, "load_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int r = detail::acc_row(i), c = detail::acc_col(i);
    f.x[i] = p[layout == mem_row_major ? r * ldm + c : c * ldm + r];
  }
}

// Each lane writes its own elements.
template <typename P>
void store_matrix_sync(const P& p, const fragment<accumulator, kDim, kDim, kDim, float, void>& f, unsigned ldm,
                       layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::store_matrix_sync", file, line);
  detail::check_operand(p, ldm, "store_matrix_sync");
  for (int i = 0; i < f.num_elements; ++i) {
    const int r = detail::acc_row(i), c = detail::acc_col(i);
    p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[i];
  }
}

// d = a b + c with float products and sums (the hardware's order of summation differs).
template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, kDim, kDim, kDim, float, void>& d,
              const fragment<matrix_a, kDim, kDim, kDim, T, LayoutA>& a,
              const fragment<matrix_b, kDim, kDim, kDim, T, LayoutB>& b,
              const fragment<accumulator, kDim, kDim, kDim, float, void>& c, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  ::fr_emu::check_whole_warp("wmma::mma_sync", file, line);
  if (detail::lane() == 0) ::fr_emu::note_mma();
  for (int i = 0; i < d.num_elements; ++i) {
    const int r = detail::acc_row(i), col = detail::acc_col(i);
    float s = c.x[i];
    for (int k = 0; k < kDim; ++k) s += static_cast<float>(a.x[r * kDim + k]) * static_cast<float>(b.x[k * kDim + col]);
    d.x[i] = s;
  }
}

}  // namespace wmma
}  // namespace nvcuda
