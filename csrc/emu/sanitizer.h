#pragma once
// The emulator's state for one launch and one running block, and the checks that are not about
// memory: what compute-sanitizer's synccheck does on a GPU, plus a schedule that varies.
//
//   - synchronisation epochs: the block's epoch moves when a __syncthreads() completes, a warp's
//     when a warp collective (__syncwarp, shuffle, ballot) completes; shared_memory.h orders
//     accesses by them;
//   - barriers: every live thread of the block must reach the same __syncthreads() call site
//     in one phase (threads that left the kernel count as arrived, as on the hardware);
//   - warp collectives: a shuffle's or ballot's mask must be exactly the warp's live lanes;
//     wmma operations must be called by all 32 lanes, at the same call site;
//   - schedule (FASTROBUST_EMU_SEED, default 1; 0: plain order): blocks run in a permuted order,
//     threads yield at shared-memory accesses and barriers, and the wmma accumulator mapping is
//     permuted, all drawn from the seed and the kernel's name (so a test replays its schedule);
//   - FASTROBUST_EMU_CHECKS=0 turns the shared-memory checks off (default on).
// A failed check raises SanitizerError in the thread that found it; the launch rethrows the
// first one once every thread has finished. Checks that run where no exception may be thrown
// (a barrier's completion step) leave the error pending: every thread raises it on leaving
// the barrier.
#ifndef FR_CUDA_EMULATION
#error "sanitizer.h is for the emulated build"
#endif

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fr_emu {

constexpr int kWarp = 32;

struct SanitizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What the environment asks of the next launch (read once per launch).
struct Options {
  bool checks = true;
  uint64_t seed = 1;

  static Options from_environment() {
    Options o;
    if (const char* c = std::getenv("FASTROBUST_EMU_CHECKS")) o.checks = std::string(c) != "0";
    if (const char* s = std::getenv("FASTROBUST_EMU_SEED")) o.seed = std::strtoull(s, nullptr, 10);
    return o;
  }
};

inline std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", v);
  return buf;
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// -- the running block ---------------------------------------------------------------------

struct BlockBarrierDone {
  void operator()() noexcept;
};
struct WarpBarrierDone {
  unsigned warp;
  void operator()() noexcept;
};
using BlockBarrier = std::barrier<BlockBarrierDone>;
using WarpBarrier = std::barrier<WarpBarrierDone>;

// Where a thread called __syncthreads() (or nothing: it has not arrived in this phase).
struct Site {
  const char* file = nullptr;
  int line = 0;
  bool operator==(const Site& o) const { return line == o.line && file == o.file; }
};

struct BlockState {
  std::optional<BlockBarrier> block_barrier;
  std::vector<std::unique_ptr<std::optional<WarpBarrier>>> warp_barriers;
  std::vector<uint64_t> exchange;  // one slot per thread, for shuffles, ballots and checks
  std::vector<Site> sites;         // per thread: the barrier it waits at in this phase
  std::unique_ptr<std::atomic<bool>[]> exited;  // per thread: left the kernel
  std::atomic<uint32_t> block_epoch{0};
  std::unique_ptr<std::atomic<uint32_t>[]> warp_epochs;
  std::unique_ptr<std::atomic<bool>[]> warp_phase_syncs;  // the warp's current phase orders memory
  // A warp phase's operation (a shuffle, a ballot, an mma.sync), done once for the whole warp by
  // the thread that completes the phase (warp_phase): what each lane asked for, its arguments,
  // its result, and the error the operation leaves for every lane to raise.
  using WarpCollective = void (*)(unsigned warp);
  std::vector<WarpCollective> lane_collectives;  // per thread; nullptr: a phase that only meets
  std::vector<const void*> collective_args;      // per thread
  std::vector<int> sources;                      // per thread: a shuffle's source lane
  std::vector<uint64_t> results;                 // per thread: a shuffle's or ballot's result
  std::vector<std::string> warp_errors;          // per warp
  std::string pending_error;  // set by a completion step, raised by every thread after it
  std::atomic<bool> has_pending_error{false};
  unsigned num_threads = 0;

  void reset(unsigned n) {
    num_threads = n;
    block_barrier.emplace(static_cast<std::ptrdiff_t>(n), BlockBarrierDone{});
    const unsigned warps = (n + kWarp - 1) / kWarp;
    if (warp_barriers.size() != warps) {
      warp_barriers.clear();
      for (unsigned w = 0; w < warps; ++w) warp_barriers.push_back(std::make_unique<std::optional<WarpBarrier>>());
      warp_epochs.reset(new std::atomic<uint32_t>[warps]);
      warp_phase_syncs.reset(new std::atomic<bool>[warps]);
    }
    for (unsigned w = 0; w < warps; ++w) {
      warp_barriers[w]->emplace(static_cast<std::ptrdiff_t>(warp_size(w)), WarpBarrierDone{w});
      warp_epochs[w].store(0);
      warp_phase_syncs[w].store(true);
    }
    exchange.assign(n, 0);
    lane_collectives.assign(n, nullptr);
    collective_args.assign(n, nullptr);
    sources.assign(n, -1);
    results.assign(n, 0);
    warp_errors.assign(warps, std::string());
    sites.assign(n, Site{});
    if (!exited || exited_size != n) {
      exited.reset(new std::atomic<bool>[n]);
      exited_size = n;
    }
    for (unsigned t = 0; t < n; ++t) exited[t].store(false);
    block_epoch.store(0);
    pending_error.clear();
    has_pending_error.store(false);
  }
  unsigned warp_size(unsigned w) const { return std::min<unsigned>(kWarp, num_threads - w * kWarp); }
  // Bits of the lanes of warp w that have not left the kernel.
  unsigned live_lanes(unsigned w) const {
    unsigned bits = 0;
    for (unsigned l = 0; l < warp_size(w); ++l)
      if (!exited[w * kWarp + l].load()) bits |= 1u << l;
    return bits;
  }

 private:
  unsigned exited_size = 0;
};

inline BlockState& block_state() {
  static BlockState s;
  return s;
}

// -- the launch ------------------------------------------------------------------------------

struct LaunchState {
  const char* kernel = "?";
  Options options;
  uint64_t serial = 0;                   // launches so far
  std::atomic<uint64_t> block_serial{0};  // unique per block run, over all launches
  size_t dynamic_bytes = 0;
  bool opted_in = false;    // the kernel set cudaFuncAttributeMaxDynamicSharedMemorySize
  size_t static_bytes = 0;  // of the FR_SHARED arrays the kernel has touched
  std::vector<const void*> static_arrays;
  std::mutex mutex;
  int wmma_map[256];  // accumulator entry held as element i of lane l: wmma_map[32 i + l]
};

inline LaunchState& launch_state() {
  static LaunchState s;
  return s;
}

inline thread_local unsigned linear_tid = 0;
inline thread_local uint64_t yield_state = 0;

inline unsigned lane_id() { return linear_tid % kWarp; }
inline unsigned warp_id() { return linear_tid / kWarp; }
inline unsigned warp_of(int tid) { return static_cast<unsigned>(tid) / kWarp; }
inline bool checks_enabled() { return launch_state().options.checks; }
inline uint64_t current_block_serial() { return launch_state().block_serial.load(std::memory_order_acquire); }
inline const char* current_kernel() { return launch_state().kernel; }

[[noreturn]] inline void raise_sanitizer_error(const std::string& msg) { throw SanitizerError(msg); }

// The calling thread's cp.async copies not yet waited for (cp_async_emu.h): each lands, through a
// checked shared store, when its group is waited for.
struct PendingCopy {
  std::function<void(const unsigned char*)> land;
  unsigned char bytes[16];
};
struct CopyQueue {
  std::vector<std::vector<PendingCopy>> groups;  // committed groups, oldest first
  std::vector<PendingCopy> open;                 // copies issued since the last commit
  bool empty() const {
    for (const auto& group : groups)
      if (!group.empty()) return false;
    return open.empty();
  }
};
inline thread_local CopyQueue copy_queue;

// At the end of a thread's block: copies it never waited for would land at some unknown time on
// the hardware (and never here), so that is an error.
inline void check_copies_waited() {
  const bool pending = !copy_queue.empty();
  copy_queue = CopyQueue{};  // the next block's thread starts with none
  if (pending)
    raise_sanitizer_error(std::string("emulated cp.async: a thread of kernel ") + launch_state().kernel +
                          " left its block with copies it never waited for (cp.async.wait_group)");
}

// With a seed, a thread gives up its core now and then (1 in 8 calls), so that the threads of a
// block interleave differently from run to run of different seeds.
inline void maybe_yield() {
  if (launch_state().options.seed == 0) return;
  yield_state = splitmix64(yield_state);
  if ((yield_state & 7) == 0) std::this_thread::yield();
}

inline WarpBarrier& warp_barrier() { return **block_state().warp_barriers[warp_id()]; }

// A phase of the calling warp's barrier; sync = false for a check-only phase (wmma
// participation), which does not order memory between the lanes. With a collective, the thread
// that completes the phase runs it once for the warp (every lane names the same one; the lanes
// have published their arguments before). An error it records is raised by every lane after.
inline void warp_phase(bool sync, BlockState::WarpCollective collective = nullptr) {
  BlockState& s = block_state();
  s.warp_phase_syncs[warp_id()].store(sync);  // every lane of the phase stores the same
  s.lane_collectives[linear_tid] = collective;
  note_sync();
  maybe_yield();
  warp_barrier().arrive_and_wait();
  if (!s.warp_errors[warp_id()].empty()) raise_sanitizer_error(s.warp_errors[warp_id()]);
}

inline void raise_pending_error() {
  BlockState& s = block_state();
  if (s.has_pending_error.load()) raise_sanitizer_error(s.pending_error);
}

inline void BlockBarrierDone::operator()() noexcept {
  BlockState& s = block_state();
  // Every live thread waits at the same __syncthreads(); threads that left do not count.
  int first = -1;
  for (unsigned t = 0; t < s.num_threads; ++t) {
    if (s.exited[t].load()) continue;
    if (first < 0) {
      first = static_cast<int>(t);
      continue;
    }
    if (!(s.sites[t] == s.sites[first]) && !s.has_pending_error.load()) {
      const Site a = s.sites[first], b = s.sites[t];
      s.pending_error = std::string("emulated synccheck: threads ") + std::to_string(first) + " and " +
                        std::to_string(t) + " of kernel " + launch_state().kernel + " met at a barrier from " +
                        "different __syncthreads() calls (" + (a.file ? a.file : "?") + ":" +
                        std::to_string(a.line) + " and " + (b.file ? b.file : "?") + ":" + std::to_string(b.line) +
                        "): a barrier in divergent code";
      s.has_pending_error.store(true);
    }
  }
  for (auto& site : s.sites) site = Site{};
  s.block_epoch.fetch_add(1);
}

inline void WarpBarrierDone::operator()() noexcept {
  BlockState& s = block_state();
  if (s.warp_phase_syncs[warp].load()) s.warp_epochs[warp].fetch_add(1);
  s.warp_phase_syncs[warp].store(true);
  // The lanes still in the kernel must have met at the same kind of operation; the collective
  // checks the rest (its call site, whole warps).
  const unsigned base = warp * kWarp;
  int first = -1;
  for (unsigned l = 0; l < s.warp_size(warp); ++l) {
    if (s.exited[base + l].load()) continue;
    if (first < 0) {
      first = static_cast<int>(l);
    } else if (s.lane_collectives[base + l] != s.lane_collectives[base + first]) {
      s.warp_errors[warp] = std::string("emulated synccheck: lanes ") + std::to_string(first) + " and " +
                            std::to_string(l) + " of warp " + std::to_string(warp) + " of kernel " +
                            launch_state().kernel +
                            " met at different warp-wide operations (a shuffle, ballot, __syncwarp or warp matrix "
                            "operation in divergent code)";
      return;
    }
  }
  if (first >= 0 && s.lane_collectives[base + first] != nullptr) s.lane_collectives[base + first](warp);
}

// The calling thread's synchronisation stamp (see shared_memory.h).
struct Stamp {
  int tid;
  uint32_t block_epoch, warp_epoch;
};
inline Stamp current_stamp() {
  BlockState& s = block_state();
  return {static_cast<int>(linear_tid), s.block_epoch.load(std::memory_order_acquire),
          s.warp_epochs[warp_id()].load(std::memory_order_acquire)};
}

// Records a FR_SHARED array the running launch uses; its bytes count towards the block's
// shared memory, which the hardware caps at 48 KiB without an opt-in (static arrays: always).
constexpr size_t kMaxSharedBytes = 48 * 1024;
void note_static_array(const void* array, size_t bytes);

}  // namespace fr_emu
