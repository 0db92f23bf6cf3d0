#pragma once
// The launch limits of the hardware that the emulator enforces, so that a launch configuration
// the GPU would refuse fails here too: threads per block, the grid, and shared memory per block
// (48 KiB of static plus dynamic, or up to 227 KiB for a kernel that opted in with
// cudaFuncAttributeMaxDynamicSharedMemorySize: FR_OPT_IN_DYNAMIC_SMEM, cuda_utils.cuh).
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "sanitizer.h"  // kMaxSharedBytes, raise_sanitizer_error
// (dim3: cuda_emu.h, which includes this header after defining it)

namespace fr_emu {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicSmem = kMaxSharedBytes;  // without the opt-in
// A block's shared memory with cudaFuncAttributeMaxDynamicSharedMemorySize (sm_90: 227 KiB).
constexpr size_t kMaxOptInSmem = 227 * 1024;

// The dynamic shared memory each kernel opted in to, by its function; an opt-in lasts, as the
// attribute does on a GPU.
struct SmemOptIns {
  std::mutex mutex;
  std::map<const void*, size_t> bytes;
};
inline SmemOptIns& smem_opt_ins() {
  static SmemOptIns s;
  return s;
}

// The kernel's opt-in, -1 where it has none.
inline int64_t smem_opt_in_of(const void* kernel) {
  SmemOptIns& s = smem_opt_ins();
  std::lock_guard<std::mutex> guard(s.mutex);
  const auto it = s.bytes.find(kernel);
  return it == s.bytes.end() ? -1 : static_cast<int64_t>(it->second);
}

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes): the GPU
// refuses more than 227 KiB (less the kernel's static shared memory, which check_shared_bytes
// checks as the kernel touches its arrays).
template <typename... KArgs>
void opt_in_dynamic_smem(const char* name, void (*kernel)(KArgs...), size_t bytes) {
  if (bytes > kMaxOptInSmem)
    throw std::invalid_argument(std::string("emulated cudaFuncSetAttribute: ") + name + " asks for " +
                                std::to_string(bytes) + " bytes of dynamic shared memory (at most " +
                                std::to_string(kMaxOptInSmem) + ")");
  SmemOptIns& s = smem_opt_ins();
  std::lock_guard<std::mutex> guard(s.mutex);
  s.bytes[reinterpret_cast<const void*>(kernel)] = bytes;
}

// What the GPU checks as a launch is made (std::invalid_argument, ValueError in Python):
// opt_in is the kernel's (smem_opt_in_of).
inline void check_launch_shape(const dim3& grid, unsigned nthreads, size_t smem_bytes, int64_t opt_in) {
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock)
    throw std::invalid_argument("emulated launch: block of " + std::to_string(nthreads) +
                                " threads (1..1024 allowed)");
  if (smem_bytes > (opt_in >= 0 ? static_cast<size_t>(opt_in) : kMaxDynamicSmem))
    throw std::invalid_argument("emulated launch: " + std::to_string(smem_bytes) +
                                " bytes of dynamic shared memory (" +
                                (opt_in >= 0 ? "its cudaFuncAttributeMaxDynamicSharedMemorySize is " +
                                                   std::to_string(opt_in) + " bytes"
                                             : std::string("48 KiB allowed without opting in with "
                                                           "cudaFuncAttributeMaxDynamicSharedMemorySize")) +
                                ")");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw std::invalid_argument("emulated launch: invalid grid");
}

// The block's shared memory once its static arrays are known (a sanitizer error).
inline void check_shared_bytes(const char* kernel, size_t static_bytes, size_t dynamic_bytes, bool opted_in) {
  if (static_bytes > kMaxSharedBytes)
    raise_sanitizer_error(std::string("emulated launch: kernel ") + kernel + " declares " +
                          std::to_string(static_bytes) + " bytes of static shared memory (at most 48 KiB)");
  if (static_bytes + dynamic_bytes > (opted_in ? kMaxOptInSmem : kMaxSharedBytes))
    raise_sanitizer_error(std::string("emulated launch: kernel ") + kernel + " uses " +
                          std::to_string(static_bytes) + " bytes of static and " + std::to_string(dynamic_bytes) +
                          " bytes of dynamic shared memory, over the " + (opted_in ? "227" : "48") +
                          " KiB a block gets " + (opted_in ? "with" : "without opting in with") +
                          " cudaFuncAttributeMaxDynamicSharedMemorySize; the GPU refuses the launch");
}

}  // namespace fr_emu
