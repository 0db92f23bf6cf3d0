#pragma once
// cp.async (sm_80+: global -> shared copies that bypass the registers, in commit groups) for the
// CPU emulator, reached through csrc/common/cp_async.cuh. On the hardware a copy lands in shared
// memory at some point before the issuing thread's cp.async.wait_group returns for its group;
// here the source is read when the copy is issued (a counted 16-byte global load) and the bytes
// land when the thread waits for the group (a checked 16-byte shared store by that thread), so:
//   - a thread that reads the destination before its own wait, or another thread that reads it
//     without a barrier after that wait, reads unwritten or stale memory, which initcheck and
//     racecheck report as they would a plain store at the wait;
//   - copies a thread never waits for never land: a thread that leaves its block with copies
//     not waited for is an error (check_copies_waited, sanitizer.h).
// Destinations and sources must be 16-byte aligned (the hardware's requirement); a copy of
// src_bytes < 16 fills the rest of the 16 bytes with zeros (cp.async's src-size operand).
#ifndef FR_CUDA_EMULATION
#error "cp_async_emu.h is for the emulated build"
#endif

#include <cstdint>
#include <cstring>
#include <string>

#include "cuda_emu.h"

namespace fr_emu {

template <typename T>
void cp_async_16(const SharedPtr<T>& dst, const T* src, int src_bytes) {
  CopyQueue& q = copy_queue;
  if (reinterpret_cast<std::uintptr_t>(dst.raw()) % 16 != 0 || reinterpret_cast<std::uintptr_t>(src) % 16 != 0)
    raise_sanitizer_error(std::string("emulated cp.async in kernel ") + launch_state().kernel +
                          ": source or destination not aligned to 16 bytes");
  if (src_bytes < 0 || src_bytes > 16)
    raise_sanitizer_error("emulated cp.async: src_bytes " + std::to_string(src_bytes) + " outside [0, 16]");
  PendingCopy c;
  std::memset(c.bytes, 0, sizeof c.bytes);
  if (src_bytes > 0) {
    note_global(src, static_cast<size_t>(src_bytes), false);
    std::memcpy(c.bytes, src, static_cast<size_t>(src_bytes));
  }
  c.land = [dst](const unsigned char* bytes) { dst.store_bytes(bytes, 16); };
  q.open.push_back(std::move(c));
}

inline void cp_async_commit() {
  CopyQueue& q = copy_queue;
  q.groups.push_back(std::move(q.open));
  q.open.clear();
}

// Lands every committed group but the newest `pending` ones.
inline void cp_async_wait(int pending) {
  CopyQueue& q = copy_queue;
  while (static_cast<int>(q.groups.size()) > pending) {
    for (const PendingCopy& c : q.groups.front()) c.land(c.bytes);
    q.groups.erase(q.groups.begin());
  }
}

}  // namespace fr_emu
