#pragma once
// A small CUDA emulator: lets g++ compile and run the device code of csrc/cuda/*_kernels.cuh
// on the CPU, so that the kernels' own logic (indexing, tiling, halos, shared memory,
// barriers, warp shuffles, atomics) runs in CI on machines without a GPU, under checks of what
// compute-sanitizer checks on a GPU (sanitizer.h, shared_memory.h).
//
// Execution model of one launch:
//   - blockDim.x*y*z std::threads are started once per launch; each sets its own threadIdx
//     (thread_local) and walks the grid's blocks in one order (permuted by the seed), one block
//     at a time;
//   - __syncthreads() is a std::barrier over the block's threads; a thread that returns from
//     the kernel counts as arrived (arrive_and_drop), as exited threads do on the hardware;
//     every live thread must wait at the same call site (synccheck);
//   - shared memory (FR_SHARED arrays and FR_DYNAMIC_SMEM) belongs to the running block,
//     poisoned before each block, every access checked for reads of unwritten elements and
//     for races (shared_memory.h);
//   - warp shuffles, ballots and mma.sync are one phase of a per-warp barrier: each lane
//     publishes its operands, and the thread that completes the phase does the operation for
//     the whole warp (lanes that meet at different kinds of operation are a synccheck error);
//     a warp is 32 consecutive linear thread ids, the last one may be partial. The mask must
//     be the warp's live lanes. A shuffle whose source lane is outside the warp (or past the
//     end of a partial warp) returns the caller's own value;
//   - atomicAdd/atomicMax use std::atomic_ref;
//   - warp matrix operations (nvcuda::wmma, m16n16k16 and tf32 m16n16k8) are in wmma_emu.h,
//     reached through csrc/common/wmma.cuh; mma.sync m16n8k16 and m16n8k8 with their
//     documented register layouts are in mma_emu.h, reached through csrc/common/mma.cuh;
//   - launches are serialised by a global mutex, since __shared__ storage is process-wide.
// What it cannot show: real concurrency between blocks, the memory model, speed.
#ifndef FR_CUDA_EMULATION
#error "cuda_emu.h is for the emulated build; define FR_CUDA_EMULATION before including it"
#endif

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cost_model.h"
#include "launch_log.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __shared__ is not defined: device code declares shared arrays with FR_SHARED (cuda_utils.cuh).
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

#include "launch_limits.h"
#include "sanitizer.h"
#include "shared_memory.h"

namespace fr_emu {

inline unsigned char*& dynamic_smem() {
  static unsigned char* p = nullptr;
  return p;
}
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// The shuffle's or ballot's mask against the warp's live lanes: on the hardware a lane named in
// the mask that does not call (or does not exist, in a partial warp) is undefined behaviour.
inline void check_collective_mask(unsigned mask, const char* what) {
  BlockState& s = block_state();
  const unsigned live = s.live_lanes(warp_id());
  if (checks_enabled() && mask != live)
    raise_sanitizer_error(std::string("emulated synccheck: ") + what + " in kernel " + launch_state().kernel +
                          " with mask 0x" + hex(mask) + " while the lanes of warp " + std::to_string(warp_id()) +
                          " that call it are 0x" + hex(live) + " (thread " + std::to_string(linear_tid) + ")");
}

// Every lane of the warp reads the value published by lane sources[lane] (its own where that
// is not a lane of the warp); run once per shuffle by the thread that completes the phase.
inline void exchange_collective(unsigned warp) {
  BlockState& s = block_state();
  const unsigned base = warp * kWarp, size = s.warp_size(warp);
  for (unsigned l = 0; l < size; ++l) {
    const int src = s.sources[base + l];
    s.results[base + l] = src >= 0 && static_cast<unsigned>(src) < size ? s.exchange[base + src] : s.exchange[base + l];
  }
}

// Exchange one value across the calling thread's warp: every live lane publishes `value`,
// then reads the value published by `src_lane` (its own when src_lane is not a lane of the warp).
// A warp collective: it orders the lanes' shared-memory accesses (the warp's epoch moves).
template <typename T>
T warp_exchange(T value, int src_lane, unsigned mask, const char* what) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>,
                "emulated shuffles move values of up to 8 bytes");
  check_collective_mask(mask, what);
  BlockState& s = block_state();
  uint64_t slot = 0;
  std::memcpy(&slot, &value, sizeof(T));
  s.exchange[linear_tid] = slot;
  s.sources[linear_tid] = src_lane;
  warp_phase(true, &exchange_collective);
  T out = value;
  std::memcpy(&out, &s.results[linear_tid], sizeof(T));
  return out;
}

// The bits of the warp's live lanes whose predicate is set, for every lane.
inline void ballot_collective(unsigned warp) {
  BlockState& s = block_state();
  const unsigned base = warp * kWarp, size = s.warp_size(warp);
  unsigned bits = 0;
  for (unsigned l = 0; l < size; ++l)
    if (!s.exited[base + l].load() && s.exchange[base + l]) bits |= 1u << l;
  for (unsigned l = 0; l < size; ++l) s.results[base + l] = bits;
}

// The warp matrix operations (wmma, mma.sync) are warp-wide: all 32 lanes call the same one at
// the same place. check_full_warp: no lane has left the kernel; call_site_key: what each lane
// publishes to show where it calls from; the two synccheck messages, `where` naming the call.
inline std::string missing_lanes_message(const std::string& where, unsigned warp) {
  return "emulated synccheck: " + where + " in kernel " + launch_state().kernel + " needs all 32 lanes of warp " +
         std::to_string(warp) + ", live lanes 0x" + hex(block_state().live_lanes(warp));
}
inline std::string mixed_operations_message(const std::string& where, unsigned warp) {
  return "emulated synccheck: the lanes of warp " + std::to_string(warp) + " of kernel " + launch_state().kernel +
         " call different warp matrix operations together (" + where + ")";
}
inline void check_full_warp(const char* op, const char* file, int line) {
  if (checks_enabled() && block_state().live_lanes(warp_id()) != 0xffffffffu)
    raise_sanitizer_error(missing_lanes_message(op, warp_id()) + " (" + file + ":" + std::to_string(line) + ")");
}
inline uint64_t call_site_key(const char* file, int line) {
  return (reinterpret_cast<uintptr_t>(file) << 16) ^ static_cast<uint64_t>(line);
}

// Both checks for wmma, in two check-only phases (they do not order memory between the lanes).
inline void check_whole_warp(const char* op, const char* file, int line) {
  check_full_warp(op, file, line);
  BlockState& s = block_state();
  const uint64_t key = call_site_key(file, line);
  s.exchange[linear_tid] = key;
  warp_phase(false);
  const unsigned base = warp_id() * kWarp;
  bool same = true;
  for (unsigned l = 0; l < kWarp; ++l) same = same && s.exchange[base + l] == key;
  warp_phase(false);
  if (checks_enabled() && !same)
    raise_sanitizer_error(mixed_operations_message(std::string(op) + " at " + file + ":" + std::to_string(line),
                                                   warp_id()));
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

// The launch's dynamic shared memory as elements of T (FR_DYNAMIC_SMEM); the first call of a
// launch sets the element type.
inline std::unique_ptr<DynamicShared>& dynamic_shared_slot() {
  static std::unique_ptr<DynamicShared> p;
  return p;
}
template <typename T>
SharedPtr<T> dynamic_shared() {
  LaunchState& L = launch_state();
  DynamicShared* d;
  {
    std::lock_guard<std::mutex> guard(L.mutex);
    auto& slot = dynamic_shared_slot();
    if (!slot) slot = std::make_unique<DynamicShared>(L.dynamic_bytes, sizeof(T), std::is_floating_point_v<T> || sizeof(T) == 2);
    d = slot.get();
  }
  if (d->elem_bytes() != sizeof(T))
    raise_sanitizer_error(std::string("emulated launch: kernel ") + L.kernel +
                          " views its dynamic shared memory as elements of two sizes");
  d->enter_block();
  return SharedPtr<T>(d, 0);
}

inline void note_static_array(const void* array, size_t bytes) {
  LaunchState& L = launch_state();
  std::lock_guard<std::mutex> guard(L.mutex);
  if (std::find(L.static_arrays.begin(), L.static_arrays.end(), array) != L.static_arrays.end()) return;
  L.static_arrays.push_back(array);
  L.static_bytes += bytes;
  check_shared_bytes(L.kernel, L.static_bytes, L.dynamic_bytes, L.opted_in);
}

// What the schedule of a launch is drawn from: the seed and the kernel, not the launch's place
// in the process, so that one test (or one call) replays the same schedule on its own.
inline uint64_t schedule_key(uint64_t seed, const char* kernel) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the kernel's name
  for (const char* c = kernel; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ull;
  return splitmix64(seed ^ h);
}

// The order the blocks of a grid run in: linear order, or a permutation drawn from the seed.
inline std::vector<dim3> block_order(dim3 grid, uint64_t seed, uint64_t key) {
  std::vector<dim3> order;
  order.reserve(size_t(grid.x) * grid.y * grid.z);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) order.emplace_back(bx, by, bz);
  if (seed != 0) {
    uint64_t r = key;
    for (size_t i = order.size(); i > 1; --i) {
      r = splitmix64(r);
      std::swap(order[i - 1], order[r % i]);
    }
  }
  return order;
}

// The cost model's sample of at most n blocks: whole rows of the grid (every blockIdx.x for
// a blockIdx.y, z), rows spread evenly over y and z, or blocks spread evenly over one row when a
// row alone has more than n. Blocks of one row share data in our kernels (a sample's
// relevance row, the keys of a batch element): sampling whole rows keeps the shared data
// counted once per row, so scaling the counts by grid / sample holds.
inline std::vector<dim3> sample_blocks(dim3 grid, const std::vector<dim3>& order, size_t n) {
  if (order.size() <= n) return order;
  std::vector<dim3> picked;
  picked.reserve(n);
  const size_t rows = size_t(grid.y) * grid.z;
  if (grid.x <= n) {
    const size_t take = n / grid.x;
    for (size_t k = 0; k < take; ++k) {
      const size_t row = k * rows / take;
      for (unsigned x = 0; x < grid.x; ++x)
        picked.push_back(dim3(x, static_cast<unsigned>(row % grid.y), static_cast<unsigned>(row / grid.y)));
    }
  } else {
    for (size_t k = 0; k < n; ++k) picked.push_back(dim3(static_cast<unsigned>(k * grid.x / n), 0, 0));
  }
  return picked;
}

// The accumulator mapping of wmma fragments for this launch: identity without a seed.
inline void draw_wmma_map(LaunchState& L, uint64_t key) {
  for (int e = 0; e < 256; ++e) L.wmma_map[e] = e;
  if (L.options.seed == 0) return;
  uint64_t r = splitmix64(key ^ 0x51ed2701ull);
  for (int i = 255; i > 0; --i) {
    r = splitmix64(r);
    std::swap(L.wmma_map[i], L.wmma_map[r % (i + 1)]);
  }
}

template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes,
            Args&&... args) {
  LaunchLog& log = launch_log();
  const int64_t opt_in = smem_opt_in_of(reinterpret_cast<const void*>(kernel));  // -1: none
  bool execute = true;
  int64_t model_blocks = 0;
  size_t record = 0;
  int64_t repeat_of = -1;  // reuse_repeats: the earlier record this launch repeats
  {
    std::lock_guard<std::mutex> guard(log.mutex);
    if (log.recording) {
      // The mangled symbol names the instantiation (template arguments included), as ptxas
      // names the same kernel compiled by nvcc; the launch site's text is the fallback.
      Dl_info info{};
      const bool found = dladdr(reinterpret_cast<void*>(kernel), &info) != 0 && info.dli_sname != nullptr;
      log.records.push_back({found ? info.dli_sname : name, {grid.x, grid.y, grid.z},
                             {block.x, block.y, block.z}, smem_bytes, {}, opt_in});
      execute = log.execute;
      model_blocks = log.model_blocks;
      record = log.records.size() - 1;
      if (log.reuse_repeats) {
        const auto [first, inserted] = log.first_of.emplace(launch_key(log.records.back()), record);
        if (!inserted) repeat_of = static_cast<int64_t>(first->second);
      }
    }
  }
  const unsigned nthreads = block.x * block.y * block.z;
  check_launch_shape(grid, nthreads, smem_bytes, opt_in);
  if (!execute) return;  // a dry run of the host code (launch_log.h)
  if (repeat_of >= 0) {  // modelled already (launch_log.h, reuse_repeats)
    std::lock_guard<std::mutex> guard(log.mutex);
    log.records[record].counters = log.records[static_cast<size_t>(repeat_of)].counters;
    log.records[record].counters["reused"] = 1;
    return;
  }

  std::lock_guard<std::mutex> guard(launch_mutex());
  LaunchState& L = launch_state();
  L.kernel = name;
  L.options = Options::from_environment();
  L.serial += 1;
  L.dynamic_bytes = smem_bytes;
  L.opted_in = opt_in >= 0;
  L.static_bytes = 0;
  L.static_arrays.clear();
  const uint64_t key = schedule_key(L.options.seed, name);
  draw_wmma_map(L, key);
  dynamic_shared_slot().reset();
  std::vector<dim3> order = block_order(grid, L.options.seed, key);
  if (model_blocks > 0) {
    order = sample_blocks(grid, order, static_cast<size_t>(model_blocks));
    cost_start(nthreads);
  }

  BlockState& state = block_state();
  state.reset(nthreads);
  L.block_serial.fetch_add(1);
  // Between blocks: every thread has left the kernel; the completion step rebuilds the
  // barriers (dropped threads have lowered their counts) for the next block.
  std::barrier<> block_end(static_cast<std::ptrdiff_t>(nthreads));
  std::exception_ptr error;
  std::mutex error_mutex;

  auto body = [&](unsigned tid) {
    linear_tid = tid;
    yield_state = splitmix64(key ^ tid);
    blockDim = block;
    gridDim = grid;
    threadIdx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    for (const dim3& b : order) {
      blockIdx = b;
      try {
        kernel(args...);
        check_copies_waited();
      } catch (...) {
        copy_queue = CopyQueue{};
        std::lock_guard<std::mutex> g(error_mutex);
        if (!error) error = std::current_exception();
      }
      state.exited[tid].store(true);
      state.block_barrier->arrive_and_drop();
      warp_barrier().arrive_and_drop();
      cost_flush(tid);
      block_end.arrive_and_wait();
      if (tid == 0) {
        cost_count_block(nthreads);
        state.reset(nthreads);
        L.block_serial.fetch_add(1);
      }
      block_end.arrive_and_wait();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(body, t);
  for (auto& t : threads) t.join();
  if (model_blocks > 0) {
    std::map<std::string, uint64_t> counters = cost_stop();
    std::lock_guard<std::mutex> g(log.mutex);
    log.records[record].counters = std::move(counters);
  }
  dynamic_shared_slot().reset();
  if (error) std::rethrow_exception(error);
}

}  // namespace fr_emu

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace fr_emu;
  BlockState& s = block_state();
  s.sites[linear_tid] = Site{file, line};
  note_sync();
  maybe_yield();
  s.block_barrier->arrive_and_wait();
  raise_pending_error();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  fr_emu::check_collective_mask(mask, "__syncwarp");
  fr_emu::warp_phase(true);
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  return fr_emu::warp_exchange(v, (lane / width) * width + src % width, mask, "__shfl_sync");
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  const int src = lane + static_cast<int>(delta);
  // Within a segment of `width` lanes; outside it the caller keeps its own value.
  return fr_emu::warp_exchange(v, (src / width == lane / width) ? src : -1, mask, "__shfl_down_sync");
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  const int src = lane - static_cast<int>(delta);
  return fr_emu::warp_exchange(v, (src >= 0 && src / width == lane / width) ? src : -1, mask, "__shfl_up_sync");
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = static_cast<int>(fr_emu::lane_id());
  const int src = lane ^ lane_mask;
  return fr_emu::warp_exchange(v, (src / width == lane / width) ? src : -1, mask, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  using namespace fr_emu;
  check_collective_mask(mask, "__ballot_sync");
  BlockState& s = block_state();
  s.exchange[linear_tid] = predicate ? 1u : 0u;
  warp_phase(true, &ballot_collective);
  return static_cast<unsigned>(s.results[linear_tid]);
}

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
T atomicAdd(fr_emu::SharedPtr<T> address, T value) {
  address.array()->on_atomic(static_cast<size_t>(address.index()));
  return std::atomic_ref<T>(*address.raw()).fetch_add(value);
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
