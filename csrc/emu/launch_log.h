#pragma once
// The emulator's record of kernel launches: which kernel, with which grid, block and dynamic
// shared memory. `fastrobust.kernel_resources` runs the emulated ops at the benchmark shapes
// with recording on and execution off (a dry run: only the host code that chooses the launch
// configurations runs), then joins the records with ptxas's resource usage of the same kernels
// to give the occupancy of every launch on a GPU.
//
// Under the cost model, a log started with reuse_repeats takes a launch that repeats an earlier
// one of the same recording (kernel, grid, block and dynamic shared memory alike) to cost what
// that one did, and does not run it: its record gets the earlier counters and "reused" = 1.
// For launches that differ only in which data they cover (NLM's batch chunks: the same kernels
// over other samples, at offsets that keep the sectors aligned) the counts are the same; the
// repeat's outputs are left unwritten, as unsampled blocks' are.
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace fr_emu {

struct LaunchRecord {
  std::string symbol;  // the emulated kernel's mangled name (namespace fastrobust::emu)
  unsigned grid[3];
  unsigned block[3];
  size_t dynamic_smem;
  std::map<std::string, uint64_t> counters;  // the cost model's (cost_model.h), when it ran
  int64_t smem_opt_in = -1;  // the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize (-1: none)
};

struct LaunchLog {
  std::mutex mutex;
  bool recording = false;
  bool execute = true;  // false: launches are recorded and checked, their kernels not run
  int64_t model_blocks = 0;  // > 0: the cost model counts, over at most this many blocks a launch
  bool reuse_repeats = false;  // with model_blocks: a repeated launch takes its first one's counts
  std::vector<LaunchRecord> records;
  std::map<std::string, size_t> first_of;  // launch key -> its first record (reuse_repeats)
};

// What makes two launches repeats of each other for reuse_repeats.
inline std::string launch_key(const LaunchRecord& r) {
  std::string key = r.symbol;
  for (unsigned v : {r.grid[0], r.grid[1], r.grid[2], r.block[0], r.block[1], r.block[2]})
    key += "|" + std::to_string(v);
  return key + "|" + std::to_string(r.dynamic_smem);
}

inline LaunchLog& launch_log() {
  static LaunchLog log;
  return log;
}

// model_blocks > 0 (with execute): each launch runs at most that many of its blocks, spread
// over the grid, with the cost model counting (outputs are then incomplete); reuse_repeats: see
// above.
inline void start_launch_log(bool execute, int64_t model_blocks, bool reuse_repeats = false) {
  LaunchLog& log = launch_log();
  std::lock_guard<std::mutex> guard(log.mutex);
  log.records.clear();
  log.first_of.clear();
  log.recording = true;
  log.execute = execute;
  log.model_blocks = execute ? model_blocks : 0;
  log.reuse_repeats = log.model_blocks > 0 && reuse_repeats;
}

// Ends recording; returns (symbol, grid, block, dynamic shared memory bytes, cost counters,
// the kernel's dynamic shared memory opt-in, -1 where it has none) per launch.
using LaunchTuple = std::tuple<std::string, std::tuple<unsigned, unsigned, unsigned>,
                               std::tuple<unsigned, unsigned, unsigned>, size_t, std::map<std::string, uint64_t>,
                               int64_t>;
inline std::vector<LaunchTuple> stop_launch_log() {
  LaunchLog& log = launch_log();
  std::lock_guard<std::mutex> guard(log.mutex);
  std::vector<LaunchTuple> out;
  for (const LaunchRecord& r : log.records)
    out.emplace_back(r.symbol, std::make_tuple(r.grid[0], r.grid[1], r.grid[2]),
                     std::make_tuple(r.block[0], r.block[1], r.block[2]), r.dynamic_smem, r.counters,
                     r.smem_opt_in);
  log.records.clear();
  log.first_of.clear();
  log.recording = false;
  log.execute = true;
  log.model_blocks = 0;
  log.reuse_repeats = false;
  return out;
}

}  // namespace fr_emu
