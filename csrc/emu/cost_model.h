#pragma once
// The emulator's cost counters: how a launch would use the GPU's memory system, counted per
// warp-wide access the way the hardware serves it.
//   - Global memory: device code reaches it through FR_GLOBAL(T) pointers (GlobalPtr<T> here,
//     plain T* under nvcc). A warp-wide load or store is served in 32-byte sectors: its cost is
//     the number of distinct sectors its lanes touch, its useful bytes what the lanes asked
//     for (sector efficiency = useful / (32 x sectors)). DRAM bytes are modelled as every
//     distinct sector the launch reads, read once, plus every distinct sector it writes,
//     written once (a perfect L2: an H100's 50 MB hold the working set of our kernels; a
//     lower bound on real traffic).
//   - Shared memory: 32 banks of 4-byte words; a warp-wide access takes as many wavefronts as
//     the most distinct words any one bank must deliver (lanes reading one word share it), at
//     best bytes / 128 (bank-conflict factor = wavefronts / that minimum). Each array's base is
//     taken as bank 0.
//   - Tensor-core operations: wmma mma_sync calls (m16n16k16, 8192 FLOPs each).
//   - SIMT multiply-adds: each thread's fused multiply-adds, as device code declares them with
//     FR_COUNT_FMA(n) at the loop that does them (2 FLOPs each; nothing on a GPU). Other SIMT
//     arithmetic (exp, max, comparisons) is not counted.
// A warp-wide access is the k-th access of each lane of the warp since the lanes last met at a
// barrier or a warp collective (a shuffle, a ballot, __syncwarp): lanes of converged code issue
// the same accesses in the same order, and a meeting realigns lanes that a branch took apart (a
// lane-0-only write before a reduction); between meetings, in divergent code, the grouping is
// approximate.
// Counting is on only while the launch log records with a cost model (launch_log.h); a launch
// may then run a sample of its blocks, and the counts are of the blocks that ran.
#ifndef FR_CUDA_EMULATION
#error "cost_model.h is for the emulated build"
#endif

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace fr_emu {

struct MemoryAccess {
  uint64_t address;  // global: the byte address; shared: array id << 32 | byte offset
  uint32_t bytes;
  bool write;
  uint32_t epoch;  // the lane's meetings (barriers, warp collectives) before the access
};

struct CostTotals {
  uint64_t global_load_requests = 0, global_load_sectors = 0, global_load_bytes = 0;
  uint64_t global_store_requests = 0, global_store_sectors = 0, global_store_bytes = 0;
  uint64_t shared_requests = 0, shared_wavefronts = 0, shared_ideal_wavefronts = 0;
  uint64_t mma_ops = 0;  // tensor-core operations (per warp)
  uint64_t mma_depth = 0;  // their k summed: an m16n16kK operation does 16 x 16 x K multiply-adds
  uint64_t mma_tile_loads = 0;  // wmma A/B tile loads (per warp; their bank conflicts are not modelled)
  uint64_t fma_ops = 0;  // SIMT multiply-adds (per thread, as FR_COUNT_FMA declares them)
  uint64_t blocks_run = 0;
  std::unordered_set<uint64_t> dram_read_sectors, dram_write_sectors;

  std::map<std::string, uint64_t> summary() const {
    return {{"global_load_requests", global_load_requests}, {"global_load_sectors", global_load_sectors},
            {"global_load_bytes", global_load_bytes}, {"global_store_requests", global_store_requests},
            {"global_store_sectors", global_store_sectors}, {"global_store_bytes", global_store_bytes},
            {"dram_read_bytes", dram_read_sectors.size() * 32},
            {"dram_write_bytes", dram_write_sectors.size() * 32}, {"shared_requests", shared_requests},
            {"shared_wavefronts", shared_wavefronts}, {"shared_ideal_wavefronts", shared_ideal_wavefronts},
            {"mma_ops", mma_ops}, {"mma_depth", mma_depth}, {"mma_tile_loads", mma_tile_loads}, {"fma_ops", fma_ops},
            {"blocks_run", blocks_run}};
  }
};

struct CostModel {
  std::atomic<bool> enabled{false};
  CostTotals totals;
  std::vector<std::vector<MemoryAccess>> global_traces, shared_traces;  // per thread of the block
  std::atomic<uint64_t> mma_ops{0}, mma_depth{0}, mma_tile_loads{0}, fma_ops{0};

  void start(unsigned nthreads) {
    totals = CostTotals{};
    global_traces.assign(nthreads, {});
    shared_traces.assign(nthreads, {});
    mma_ops.store(0);
    mma_depth.store(0);
    mma_tile_loads.store(0);
    fma_ops.store(0);
  }
};

inline CostModel& cost_model() {
  static CostModel model;
  return model;
}

inline thread_local std::vector<MemoryAccess> global_trace;
inline thread_local std::vector<MemoryAccess> shared_trace;
inline thread_local int not_counted_depth = 0;
inline thread_local uint32_t sync_epoch = 0;  // reset per block by cost_flush
inline thread_local uint64_t fma_count = 0;    // the thread's multiply-adds, handed over by cost_flush

inline bool counting() { return not_counted_depth == 0 && cost_model().enabled.load(std::memory_order_relaxed); }

// Accesses the emulator makes on a warp's behalf (a wmma tile read by lane 0) are not the
// warp's access pattern: they are left out (tile loads are counted as mma_tile_loads).
struct NotCounted {
  NotCounted() { ++not_counted_depth; }
  ~NotCounted() { --not_counted_depth; }
  NotCounted(const NotCounted&) = delete;
  NotCounted& operator=(const NotCounted&) = delete;
};

inline void note_global(const void* address, size_t bytes, bool write) {
  if (counting())
    global_trace.push_back({reinterpret_cast<uint64_t>(address), static_cast<uint32_t>(bytes), write, sync_epoch});
}

// The calling thread met the others of its block (barrier) or warp (collective).
inline void note_sync() { ++sync_epoch; }

inline void note_shared(const void* array, size_t byte_offset, size_t bytes, bool write) {
  if (!counting()) return;
  // The array is told apart by the low 32 bits of its object's address.
  const uint64_t id = reinterpret_cast<uint64_t>(array) & 0xffffffffull;
  shared_trace.push_back({id << 32 | byte_offset, static_cast<uint32_t>(bytes), write, sync_epoch});
}

// One m16n16kK tensor-core operation by the calling warp.
inline void note_mma(unsigned k) {
  if (!counting()) return;
  cost_model().mma_ops.fetch_add(1, std::memory_order_relaxed);
  cost_model().mma_depth.fetch_add(k, std::memory_order_relaxed);
}
inline void note_mma_tile_load() {
  if (counting()) cost_model().mma_tile_loads.fetch_add(1, std::memory_order_relaxed);
}
// n multiply-adds by the calling thread (FR_COUNT_FMA).
inline void note_fma(uint64_t n) {
  if (counting()) fma_count += n;
}

// Starts counting for a launch of nthreads-thread blocks.
inline void cost_start(unsigned nthreads) {
  CostModel& m = cost_model();
  m.start(nthreads);
  m.enabled.store(true);
}

// Stops counting; the launch's totals.
inline std::map<std::string, uint64_t> cost_stop() {
  CostModel& m = cost_model();
  m.enabled.store(false);
  m.totals.mma_ops = m.mma_ops.load();
  m.totals.mma_depth = m.mma_depth.load();
  m.totals.mma_tile_loads = m.mma_tile_loads.load();
  m.totals.fma_ops = m.fma_ops.load();
  return m.totals.summary();
}

// End of a block, each thread: hands its traces to the block's table.
inline void cost_flush(unsigned tid) {
  if (!counting()) return;
  CostModel& m = cost_model();
  m.global_traces[tid].swap(global_trace);
  m.shared_traces[tid].swap(shared_trace);
  m.fma_ops.fetch_add(fma_count, std::memory_order_relaxed);
  global_trace.clear();
  shared_trace.clear();
  sync_epoch = 0;
  fma_count = 0;
}

namespace detail {

inline void count_global(CostTotals& t, const std::vector<const MemoryAccess*>& warp_access) {
  // Useful bytes: the distinct bytes the lanes ask for (lanes reading one address share it).
  std::unordered_set<uint64_t> sectors, starts;
  uint64_t bytes = 0;
  bool write = false;
  for (const MemoryAccess* a : warp_access) {
    for (uint64_t s = a->address / 32; s <= (a->address + a->bytes - 1) / 32; ++s) sectors.insert(s);
    if (starts.insert(a->address).second) bytes += a->bytes;
    write = write || a->write;
  }
  auto& dram = write ? t.dram_write_sectors : t.dram_read_sectors;
  for (uint64_t s : sectors) dram.insert(s);
  if (write) {
    t.global_store_requests += 1;
    t.global_store_sectors += sectors.size();
    t.global_store_bytes += bytes;
  } else {
    t.global_load_requests += 1;
    t.global_load_sectors += sectors.size();
    t.global_load_bytes += bytes;
  }
}

inline void count_shared(CostTotals& t, const std::vector<const MemoryAccess*>& warp_access) {
  std::unordered_map<uint32_t, std::unordered_set<uint64_t>> words_of_bank;
  std::unordered_set<uint64_t> words;
  for (const MemoryAccess* a : warp_access) {
    const uint64_t array = a->address >> 32, offset = a->address & 0xffffffffull;
    for (uint64_t w = offset / 4; w <= (offset + a->bytes - 1) / 4; ++w) {
      words_of_bank[static_cast<uint32_t>(w % 32)].insert(array << 32 | w);
      words.insert(array << 32 | w);
    }
  }
  size_t wavefronts = 1;
  for (const auto& [bank, ws] : words_of_bank) wavefronts = std::max(wavefronts, ws.size());
  t.shared_requests += 1;
  t.shared_wavefronts += wavefronts;
  t.shared_ideal_wavefronts += std::max<uint64_t>(1, (words.size() * 4 + 127) / 128);
}

// Groups each warp's accesses into warp-wide ones: for every epoch (meetings of the lanes so
// far), the k-th access of each lane in that epoch.
template <typename Count>
void count_warps(CostTotals& t, const std::vector<std::vector<MemoryAccess>>& traces, unsigned nthreads,
                 Count count) {
  std::vector<const MemoryAccess*> warp_access;
  std::vector<size_t> next(32);
  for (unsigned first = 0; first < nthreads; first += 32) {
    const unsigned last = std::min(nthreads, first + 32);
    std::fill(next.begin(), next.end(), 0);
    while (true) {
      // the earliest epoch any lane still has accesses in
      uint32_t epoch = UINT32_MAX;
      for (unsigned tid = first; tid < last; ++tid)
        if (next[tid - first] < traces[tid].size()) epoch = std::min(epoch, traces[tid][next[tid - first]].epoch);
      if (epoch == UINT32_MAX) break;
      while (true) {
        warp_access.clear();
        for (unsigned tid = first; tid < last; ++tid) {
          size_t& k = next[tid - first];
          if (k < traces[tid].size() && traces[tid][k].epoch == epoch) warp_access.push_back(&traces[tid][k++]);
        }
        if (warp_access.empty()) break;
        count(t, warp_access);
      }
    }
  }
}

}  // namespace detail

// End of a block, one thread, after every thread flushed: counts the block's warp accesses.
inline void cost_count_block(unsigned nthreads) {
  if (!counting()) return;
  CostModel& m = cost_model();
  detail::count_warps(m.totals, m.global_traces, nthreads, detail::count_global);
  detail::count_warps(m.totals, m.shared_traces, nthreads, detail::count_shared);
  for (auto& t : m.global_traces) t.clear();
  for (auto& t : m.shared_traces) t.clear();
  m.totals.blocks_run += 1;
}

// ---- global memory through FR_GLOBAL(T) ---------------------------------------------------

template <typename T>
class GlobalRef {
  using Value = std::remove_const_t<T>;

 public:
  explicit GlobalRef(T* p) : p_(p) {}
  operator Value() const {
    note_global(p_, sizeof(T), false);
    return *p_;
  }
  Value load() const { return static_cast<Value>(*this); }
  // acc(ref) for a 16-bit float element: Half -> float is itself a user conversion, which a
  // cast may not chain after this class's, so convert in one step.
  template <typename U, typename = std::enable_if_t<!std::is_same_v<U, Value> && std::is_arithmetic_v<U> &&
                                                    std::is_constructible_v<U, Value>>>
  explicit operator U() const {
    return static_cast<U>(load());
  }
  template <typename U = T, typename = std::enable_if_t<!std::is_const_v<U>>>
  GlobalRef& operator=(const Value& v) {
    note_global(p_, sizeof(T), true);
    *p_ = v;
    return *this;
  }
  GlobalRef& operator=(const GlobalRef& other) { return *this = other.load(); }
#define FR_EMU_GLOBAL_COMPOUND(op)                                                          \
  template <typename V, typename U = T, typename = std::enable_if_t<!std::is_const_v<U>>> \
  GlobalRef& operator op##=(const V& v) {                                                 \
    return *this = static_cast<Value>(load() op v);                                       \
  }
  FR_EMU_GLOBAL_COMPOUND(+)
  FR_EMU_GLOBAL_COMPOUND(-)
  FR_EMU_GLOBAL_COMPOUND(*)
  FR_EMU_GLOBAL_COMPOUND(/)
#undef FR_EMU_GLOBAL_COMPOUND
  T* operator&() const { return p_; }  // for atomics (not counted as loads or stores)

 private:
  T* p_;
};

// A pointer to global memory whose element accesses are counted (a T* on the GPU).
template <typename T>
class GlobalPtr {
 public:
  using element_type = T;
  GlobalPtr() = default;
  GlobalPtr(T* p) : p_(p) {}  // NOLINT: a T* converts, as on the GPU
  template <typename U, typename = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  GlobalPtr(const GlobalPtr<U>& other) : p_(other.get()) {}  // NOLINT

  GlobalRef<T> operator*() const { return GlobalRef<T>(p_); }
  GlobalRef<T> operator[](ptrdiff_t i) const { return GlobalRef<T>(p_ + i); }
  GlobalPtr operator+(ptrdiff_t i) const { return GlobalPtr(p_ + i); }
  GlobalPtr operator-(ptrdiff_t i) const { return GlobalPtr(p_ - i); }
  ptrdiff_t operator-(const GlobalPtr& o) const { return p_ - o.p_; }
  GlobalPtr& operator+=(ptrdiff_t i) { p_ += i; return *this; }
  GlobalPtr& operator-=(ptrdiff_t i) { p_ -= i; return *this; }
  GlobalPtr& operator++() { ++p_; return *this; }
  bool operator==(const GlobalPtr& o) const { return p_ == o.p_; }
  bool operator!=(const GlobalPtr& o) const { return p_ != o.p_; }
  explicit operator bool() const { return p_ != nullptr; }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

}  // namespace fr_emu
