#pragma once
// A small CUDA emulator: lets g++ compile and run the device code of csrc/cuda/*_kernels.cuh
// on the CPU, so that the kernels' own logic (indexing, tiling, halos, shared memory,
// barriers, warp shuffles, atomics) runs in CI on machines without a GPU.
//
// Execution model of one launch:
//   - blockDim.x*y*z std::threads are started once per launch; each sets its own threadIdx
//     (thread_local) and walks the grid's blocks in order, one block at a time;
//   - __syncthreads() is a std::barrier over the block's threads; a thread that returns from
//     the kernel counts as arrived (arrive_and_drop), as exited threads do on the hardware;
//   - __shared__ variables are function-static, so the threads of the running block share
//     them; dynamic shared memory is one zero-poisoned buffer per launch (FR_DYNAMIC_SMEM);
//   - warp shuffles and ballots exchange values through a per-warp buffer between two
//     per-warp barriers; a warp is 32 consecutive linear thread ids, the last one may be
//     partial. The mask argument is ignored: all live threads of a warp must take part,
//     which is what our kernels do. A shuffle whose source lane is outside the warp (or past
//     the end of a partial warp) returns the caller's own value;
//   - atomicAdd/atomicMax use std::atomic_ref;
//   - warp matrix operations (nvcuda::wmma, m16n16k16) are in wmma_emu.h, reached through
//     csrc/common/wmma.cuh;
//   - launches are serialised by a global mutex, since __shared__ storage is process-wide.
// What it cannot show: real concurrency between blocks, the memory model, speed.
#ifndef FR_CUDA_EMULATION
#error "cuda_emu.h is for the emulated build; define FR_CUDA_EMULATION before including it"
#endif

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace fr_emu {

constexpr int kWarp = 32;
// Upper bounds of the hardware that the emulator enforces, so that a launch configuration
// the GPU would reject fails here too.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicSmem = 48 * 1024;

using Barrier = std::barrier<>;

// State of the block that is running now; rebuilt between blocks.
struct BlockState {
  std::optional<Barrier> block_barrier;
  std::vector<std::unique_ptr<std::optional<Barrier>>> warp_barriers;
  std::vector<uint64_t> exchange;  // one slot per thread, for shuffles and ballots
  unsigned num_threads = 0;

  void reset(unsigned n) {
    num_threads = n;
    block_barrier.emplace(static_cast<std::ptrdiff_t>(n));
    const unsigned warps = (n + kWarp - 1) / kWarp;
    if (warp_barriers.size() != warps) {
      warp_barriers.clear();
      for (unsigned w = 0; w < warps; ++w)
        warp_barriers.push_back(std::make_unique<std::optional<Barrier>>());
    }
    for (unsigned w = 0; w < warps; ++w)
      warp_barriers[w]->emplace(static_cast<std::ptrdiff_t>(warp_size(w)));
    exchange.assign(n, 0);
  }
  unsigned warp_size(unsigned w) const {
    return std::min<unsigned>(kWarp, num_threads - w * kWarp);
  }
};

inline BlockState& block_state() {
  static BlockState s;
  return s;
}
inline unsigned char*& dynamic_smem() {
  static unsigned char* p = nullptr;
  return p;
}
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}
inline thread_local unsigned linear_tid = 0;

inline unsigned lane_id() { return linear_tid % kWarp; }
inline unsigned warp_id() { return linear_tid / kWarp; }
inline Barrier& warp_barrier() { return **block_state().warp_barriers[warp_id()]; }

// Exchange one value across the calling thread's warp: every live lane publishes `value`,
// then reads the value published by `src_lane` (its own when src_lane is not a live lane).
template <typename T>
T warp_exchange(T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>,
                "emulated shuffles move values of up to 8 bytes");
  BlockState& s = block_state();
  const unsigned base = warp_id() * kWarp;
  uint64_t slot = 0;
  std::memcpy(&slot, &value, sizeof(T));
  s.exchange[linear_tid] = slot;
  warp_barrier().arrive_and_wait();
  T out = value;
  if (src_lane >= 0 && static_cast<unsigned>(src_lane) < s.warp_size(warp_id()))
    std::memcpy(&out, &s.exchange[base + src_lane], sizeof(T));
  warp_barrier().arrive_and_wait();
  return out;
}

// A failed FR_DEVICE_ASSERT: the thread leaves the kernel (like a trap), and the launch
// rethrows the first failure once every thread has finished.
struct DeviceAssertion : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] inline void device_assert_failed(const char* msg, const char* file, int line) {
  throw DeviceAssertion(std::string("device-side assert triggered: ") + msg + " (block " +
                        std::to_string(blockIdx.x) + ", thread " + std::to_string(threadIdx.x) +
                        ", " + file + ":" + std::to_string(line) + ")");
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes,
            Args&&... args) {
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock)
    throw std::invalid_argument("emulated launch: block of " + std::to_string(nthreads) +
                                " threads (1..1024 allowed)");
  if (smem_bytes > kMaxDynamicSmem)
    throw std::invalid_argument("emulated launch: " + std::to_string(smem_bytes) +
                                " bytes of dynamic shared memory (48 KiB allowed)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw std::invalid_argument("emulated launch: invalid grid");

  std::lock_guard<std::mutex> guard(launch_mutex());
  // Poison dynamic shared memory so that reads of unwritten entries show up as NaN-ish
  // garbage rather than convenient zeros.
  std::vector<unsigned char> smem(std::max<size_t>(smem_bytes, 16) + 16, 0xA5);
  void* aligned = smem.data();
  size_t space = smem.size();
  std::align(16, smem_bytes, aligned, space);
  dynamic_smem() = static_cast<unsigned char*>(aligned);

  BlockState& state = block_state();
  state.reset(nthreads);
  // Between blocks: every thread has left the kernel; the completion step rebuilds the
  // barriers (dropped threads have lowered their counts) for the next block.
  Barrier block_end(static_cast<std::ptrdiff_t>(nthreads));
  std::exception_ptr error;
  std::mutex error_mutex;

  auto body = [&](unsigned tid) {
    linear_tid = tid;
    blockDim = block;
    gridDim = grid;
    threadIdx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = dim3(bx, by, bz);
          try {
            kernel(args...);
          } catch (...) {
            std::lock_guard<std::mutex> g(error_mutex);
            if (!error) error = std::current_exception();
          }
          state.block_barrier->arrive_and_drop();
          warp_barrier().arrive_and_drop();
          block_end.arrive_and_wait();
          if (tid == 0) state.reset(nthreads);
          block_end.arrive_and_wait();
        }
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(body, t);
  for (auto& t : threads) t.join();
  dynamic_smem() = nullptr;
  if (error) std::rethrow_exception(error);
}

}  // namespace fr_emu

inline void __syncthreads() { fr_emu::block_state().block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { fr_emu::warp_barrier().arrive_and_wait(); }

template <typename T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  return fr_emu::warp_exchange(v, (lane / width) * width + src % width);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  const int src = lane + static_cast<int>(delta);
  // Within a segment of `width` lanes; outside it the caller keeps its own value.
  return fr_emu::warp_exchange(v, (src / width == lane / width) ? src : -1);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  const int src = lane - static_cast<int>(delta);
  return fr_emu::warp_exchange(v, (src >= 0 && src / width == lane / width) ? src : -1);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  const int src = lane ^ mask;
  return fr_emu::warp_exchange(v, (src / width == lane / width) ? src : -1);
}
inline unsigned __ballot_sync(unsigned, int predicate) {
  using namespace fr_emu;
  BlockState& s = block_state();
  const unsigned base = warp_id() * kWarp;
  s.exchange[linear_tid] = predicate ? 1u : 0u;
  warp_barrier().arrive_and_wait();
  unsigned bits = 0;
  for (unsigned l = 0; l < s.warp_size(warp_id()); ++l)
    if (s.exchange[base + l]) bits |= 1u << l;
  warp_barrier().arrive_and_wait();
  return bits;
}

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
