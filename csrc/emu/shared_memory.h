#pragma once
// Checked shared memory for the CUDA emulator: what compute-sanitizer's initcheck and racecheck
// do for __shared__ on a GPU, on every emulated launch.
//
// Device code declares shared arrays with FR_SHARED (csrc/common/cuda_utils.cuh) and takes
// FR_DYNAMIC_SMEM; in the emulated build both give a SharedPtr<T>, whose element accesses go
// through SharedRef<T>, and every access is checked against a shadow record of its element:
//   - storage belongs to the running block: before each block it is filled with a poison
//     pattern (a signalling NaN for floating types, 0xA5 bytes otherwise) and the shadow is
//     cleared, so nothing carries over from the previous block or launch;
//   - initcheck: reading an element that no thread of the block has written is an error;
//   - racecheck: two accesses to one element by different threads, at least one a write, with
//     no __syncthreads() between them (for two lanes of one warp: no __syncwarp() or warp
//     collective either) are a read-after-write, write-after-read or write-after-write race.
// Each element's shadow keeps its last write and up to kReaders reads since then (a thread,
// and the block's and its warp's synchronisation epochs at the access); an access is ordered
// after an earlier one when a barrier completed in between (the block epoch moved) or, for
// two lanes of one warp, a warp collective did (the warp's epoch moved).
// Errors name the kernel, the array, the element and the two threads; the offending thread
// leaves the kernel with a SanitizerError, which the launch rethrows once every thread is done.
#ifndef FR_CUDA_EMULATION
#error "shared_memory.h is for the emulated build"
#endif

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cost_model.h"
#include "sanitizer.h"

namespace fr_emu {

// One synchronisation-stamped access to an element.
struct Access {
  int32_t tid = -1;  // -1: none
  uint32_t block_epoch = 0;
  uint32_t warp_epoch = 0;
};

struct ElementShadow {
  Access write;
  static constexpr int kReaders = 4;
  Access reads[kReaders];
  bool written = false;
};

// Storage and shadow of one shared array (a FR_SHARED declaration or the dynamic buffer).
class SharedArrayBase {
 public:
  SharedArrayBase(const char* name, size_t elem_bytes, bool floating, bool is_static)
      : name_(name), elem_bytes_(elem_bytes), floating_(floating), static_(is_static) {}
  virtual ~SharedArrayBase() = default;

  const char* name() const { return name_; }
  unsigned char* bytes() { return storage_.get(); }
  size_t size() const { return count_; }

  // Makes the array the running block's: poisoned storage, empty shadow (once per block; the
  // first thread of the block to touch the array does it, the others wait on the mutex).
  void enter_block() {
    const uint64_t block = current_block_serial();
    if (block_.load(std::memory_order_acquire) == block) return;
    std::lock_guard<std::mutex> guard(reset_mutex_);
    if (block_.load(std::memory_order_relaxed) == block) return;
    poison();
    for (auto& s : shadow_) s = ElementShadow{};
    if (static_) note_static_array(this, count_ * elem_bytes_);
    block_.store(block, std::memory_order_release);
  }

  void on_read(size_t i) {
    checked(i, /*yield=*/true, [&](ElementShadow& s, const Access& now) {
      if (!s.written)
        fail("initcheck", "read of shared memory no thread of the block has written", i, now.tid, -1);
      if (unordered(s.write, now))
        fail("racecheck", "read-after-write race (no barrier between the write and the read)", i, s.write.tid,
             now.tid);
      add_reader(s, now);
    });
  }

  void on_write(size_t i) {
    checked(i, /*yield=*/true, [&](ElementShadow& s, const Access& now) {
      if (unordered(s.write, now))
        fail("racecheck", "write-after-write race (no barrier between the two writes)", i, s.write.tid, now.tid);
      for (const Access& r : s.reads)
        if (unordered(r, now))
          fail("racecheck", "write-after-read race (no barrier between the read and the write)", i, r.tid, now.tid);
      s.write = now;
      for (Access& r : s.reads) r = Access{};
      s.written = true;
    });
  }

  // An atomic read-modify-write: ordered with other atomics, but not with plain accesses.
  void on_atomic(size_t i) {
    checked(i, /*yield=*/false, [&](ElementShadow& s, const Access& now) {
      if (!s.written)
        fail("initcheck", "atomic on shared memory no thread of the block has written", i, now.tid, -1);
      for (const Access& r : s.reads)
        if (unordered(r, now))
          fail("racecheck", "atomic after a plain read (no barrier between them)", i, r.tid, now.tid);
      s.write = Access{};  // atomics do not race with each other
      s.written = true;
    });
  }

 protected:
  void allocate(size_t count) {
    count_ = count;
    storage_.reset(new (std::align_val_t(64)) unsigned char[std::max<size_t>(count * elem_bytes_, 1)]);
    shadow_.assign(count, ElementShadow{});
    block_.store(~uint64_t(0));
  }

 private:
  // One access to element i under the checks: the access is stamped, the element's shadow
  // locked, then `check` inspects and updates it (nothing when the checks are off).
  template <typename Check>
  void checked(size_t i, bool yield, Check check) {
    if (!checks_enabled()) return;
    if (yield) maybe_yield();
    check_index(i);
    const Access now = stamped();
    std::lock_guard<SpinLock> guard(lock_for(i));
    check(shadow_[i], now);
  }

  struct SpinLock {
    std::atomic_flag flag = ATOMIC_FLAG_INIT;
    void lock() {
      while (flag.test_and_set(std::memory_order_acquire)) {
      }
    }
    void unlock() { flag.clear(std::memory_order_release); }
  };
  struct AlignedDelete {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };

  static Access stamped() {
    const Stamp st = current_stamp();
    return Access{st.tid, st.block_epoch, st.warp_epoch};
  }

  static std::string block_description() {
    return "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
           std::to_string(blockIdx.z) + ")";
  }

  static constexpr size_t kLocks = 256;
  SpinLock& lock_for(size_t i) { return locks_[i % kLocks]; }

  // The earlier access `a` is not ordered before the current access `now` by a barrier.
  static bool unordered(const Access& a, const Access& now) {
    if (a.tid < 0 || a.tid == now.tid) return false;
    if (a.block_epoch != now.block_epoch) return false;  // a __syncthreads() completed since
    if (warp_of(a.tid) == warp_of(now.tid) && a.warp_epoch != now.warp_epoch) return false;
    return true;
  }

  static void add_reader(ElementShadow& s, const Access& now) {
    Access* free_slot = nullptr;
    for (Access& r : s.reads) {
      if (r.tid == now.tid) {
        r = now;
        return;
      }
      if (r.tid < 0 || r.block_epoch != now.block_epoch) free_slot = free_slot ? free_slot : &r;
    }
    // A full list keeps the readers it has: they already make any other writer a race.
    if (free_slot) *free_slot = now;
  }

  void check_index(size_t i) const {
    if (i >= count_)
      fail("memcheck", "shared memory access out of bounds", i, current_stamp().tid, -1);
  }

  [[noreturn]] void fail(const char* tool, const char* what, size_t i, int first, int second) const {
    std::string msg = std::string("emulated ") + tool + ": " + what + " in kernel " + current_kernel() +
                      ", shared array '" + name_ + "' element " + std::to_string(i) + " (of " +
                      std::to_string(count_) + "), " + block_description();
    if (second >= 0)
      msg += ", threads " + std::to_string(first) + " and " + std::to_string(second);
    else
      msg += ", thread " + std::to_string(first);
    raise_sanitizer_error(msg);
  }

  void poison() {
    unsigned char* p = storage_.get();
    if (!floating_) {
      std::memset(p, 0xA5, count_ * elem_bytes_);
      return;
    }
    // Signalling NaNs of the element's width (quiet bit clear, payload non-zero).
    for (size_t i = 0; i < count_; ++i) {
      unsigned char* e = p + i * elem_bytes_;
      if (elem_bytes_ == 2) {
        const uint16_t bits = 0x7d01;  // float16 sNaN; read as bfloat16: a large finite value
        std::memcpy(e, &bits, 2);
      } else if (elem_bytes_ == 4) {
        const uint32_t bits = 0x7fa00001u;
        std::memcpy(e, &bits, 4);
      } else if (elem_bytes_ == 8) {
        const uint64_t bits = 0x7ff4000000000001ull;
        std::memcpy(e, &bits, 8);
      } else {
        std::memset(e, 0xA5, elem_bytes_);
      }
    }
  }

  const char* name_;
  size_t elem_bytes_;
  bool floating_;
  bool static_;
  size_t count_ = 0;
  std::unique_ptr<unsigned char[], AlignedDelete> storage_;
  std::vector<ElementShadow> shadow_;
  SpinLock locks_[kLocks];
  std::atomic<uint64_t> block_{~uint64_t(0)};
  std::mutex reset_mutex_;
};

template <typename T> class SharedPtr;

// An element of shared memory: reads and writes go through the array's checks.
template <typename T>
class SharedRef {
  using Value = std::remove_const_t<T>;

 public:
  SharedRef(SharedArrayBase* array, size_t index) : array_(array), index_(index) {}

  operator Value() const {
    array_->on_read(index_);
    note_shared(array_, index_ * sizeof(T), sizeof(T), false);
    return *address();
  }
  Value load() const { return static_cast<Value>(*this); }

  template <typename U = T, typename = std::enable_if_t<!std::is_const_v<U>>>
  SharedRef& operator=(const Value& v) {
    array_->on_write(index_);
    note_shared(array_, index_ * sizeof(T), sizeof(T), true);
    *address() = v;
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = other.load(); }

#define FR_EMU_COMPOUND(op)                                             \
  template <typename V, typename U = T, typename = std::enable_if_t<!std::is_const_v<U>>> \
  SharedRef& operator op##=(const V& v) {                               \
    const Value old = load();                                           \
    return *this = static_cast<Value>(old op v);                        \
  }
  FR_EMU_COMPOUND(+)
  FR_EMU_COMPOUND(-)
  FR_EMU_COMPOUND(*)
  FR_EMU_COMPOUND(/)
#undef FR_EMU_COMPOUND

  SharedPtr<T> operator&() const { return SharedPtr<T>(array_, index_); }

  // For the emulated atomics.
  SharedArrayBase* array() const { return array_; }
  size_t index() const { return index_; }
  T* address() const { return reinterpret_cast<T*>(array_->bytes()) + index_; }

 private:
  SharedArrayBase* array_;
  size_t index_;
};

// A pointer into a shared array (what a __shared__ array decays to on the GPU).
template <typename T>
class SharedPtr {
 public:
  using element_type = T;
  SharedPtr() = default;
  SharedPtr(std::nullptr_t) {}  // NOLINT: a null shared pointer, as T* = nullptr
  SharedPtr(SharedArrayBase* array, size_t index) : array_(array), index_(static_cast<ptrdiff_t>(index)) {}
  template <typename U, typename = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  SharedPtr(const SharedPtr<U>& other) : array_(other.array()), index_(other.index()) {}

  SharedRef<T> operator*() const { return (*this)[0]; }
  SharedRef<T> operator[](ptrdiff_t i) const { return SharedRef<T>(array_, static_cast<size_t>(index_ + i)); }
  SharedPtr operator+(ptrdiff_t i) const { return SharedPtr(array_, static_cast<size_t>(index_ + i)); }
  SharedPtr operator-(ptrdiff_t i) const { return SharedPtr(array_, static_cast<size_t>(index_ - i)); }
  ptrdiff_t operator-(const SharedPtr& o) const { return index_ - o.index_; }
  SharedPtr& operator+=(ptrdiff_t i) { index_ += i; return *this; }
  SharedPtr& operator-=(ptrdiff_t i) { index_ -= i; return *this; }
  SharedPtr& operator++() { ++index_; return *this; }
  bool operator==(const SharedPtr& o) const { return array_ == o.array_ && index_ == o.index_; }
  bool operator!=(const SharedPtr& o) const { return !(*this == o); }

  explicit operator bool() const { return array_ != nullptr; }
  SharedArrayBase* array() const { return array_; }
  ptrdiff_t index() const { return index_; }
  // The address of the element (alignment checks; never for an unchecked access).
  T* raw() const { return reinterpret_cast<T*>(array_->bytes()) + index_; }
  // Writes nbytes (whole elements) from src as one access of the calling thread, as a vector
  // store or a cp.async landing is: every element is checked, the cost model sees one access.
  void store_bytes(const void* src, size_t nbytes) const {
    for (size_t e = 0; e < nbytes / sizeof(T); ++e) array_->on_write(static_cast<size_t>(index_) + e);
    note_shared(array_, static_cast<size_t>(index_) * sizeof(T), nbytes, true);
    std::memcpy(raw(), src, nbytes);
  }
  // Reads nbytes (whole elements) into dst as one access of the calling thread (a vector load).
  void load_bytes(void* dst, size_t nbytes) const {
    for (size_t e = 0; e < nbytes / sizeof(T); ++e) array_->on_read(static_cast<size_t>(index_) + e);
    note_shared(array_, static_cast<size_t>(index_) * sizeof(T), nbytes, false);
    std::memcpy(dst, raw(), nbytes);
  }

 private:
  SharedArrayBase* array_ = nullptr;
  ptrdiff_t index_ = 0;
};

template <typename T>
SharedPtr<T> operator+(ptrdiff_t i, const SharedPtr<T>& p) { return p + i; }

// A FR_SHARED array: static storage of the kernel function, made the running block's on first
// use in each block (SharedArrayBase::enter_block).
template <typename T, size_t N>
class SharedArray : public SharedArrayBase {
 public:
  explicit SharedArray(const char* name) : SharedArrayBase(name, sizeof(T), is_floating(), true) { allocate(N); }
  SharedPtr<T> begin() {
    enter_block();
    return SharedPtr<T>(this, 0);
  }

 private:
  static constexpr bool is_floating() {
    return std::is_floating_point_v<T> || sizeof(T) == 2;  // float, double, and the 16-bit floats
  }
};

// The launch's dynamic shared memory seen as elements of one type (FR_DYNAMIC_SMEM); made by
// the first thread that asks for it in a launch, with that type.
class DynamicShared : public SharedArrayBase {
 public:
  DynamicShared(size_t bytes, size_t elem_bytes, bool floating)
      : SharedArrayBase("dynamic shared memory", elem_bytes, floating, false), elem_bytes_(elem_bytes) {
    allocate(bytes / elem_bytes);
  }
  size_t elem_bytes() const { return elem_bytes_; }

 private:
  size_t elem_bytes_;
};

}  // namespace fr_emu
