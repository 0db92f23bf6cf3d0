// The pybind11 module fastrobust._C. Importing it loads the library, whose static
// initialisers register every op with the PyTorch dispatcher; the module itself carries
// which parts were compiled in
// (versions and flags are in fastrobust/_build_info.py, written by setup.py).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops/nlm.h"
#ifdef FR_WITH_EMU
#include "emu/launch_log.h"
#endif


PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrobust C++/CUDA kernels";
#ifdef FR_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef FR_WITH_EMU
  m.attr("with_cuda_emulation") = true;
  m.def("_emu_start_launch_log", &fr_emu::start_launch_log, pybind11::arg("execute"),
        pybind11::arg("model_blocks") = 0, pybind11::arg("reuse_repeats") = false,
        "Record the emulated kernel launches from now on; execute=False runs only the host code "
        "(a dry run: outputs are left unwritten); model_blocks > 0 runs at most that many blocks of "
        "each launch under the cost model's counters (csrc/emu/cost_model.h); reuse_repeats gives a "
        "launch that repeats an earlier one (kernel, grid, block, shared memory) that one's counters "
        "without running it (csrc/emu/launch_log.h).");
  m.def("_emu_stop_launch_log", &fr_emu::stop_launch_log,
        "Stop recording; the launches as (mangled kernel symbol, grid, block, dynamic shared bytes, "
        "cost counters).");
#else
  m.attr("with_cuda_emulation") = false;
#endif
#ifdef NDEBUG
  m.attr("debug") = false;
#else
  m.attr("debug") = true;
#endif
  m.def("_nlm_tensor_core_kernels_usable", &fastrobust::nlm::tensor_core_kernels_usable, pybind11::arg("device_major"),
        pybind11::arg("binary_version"), pybind11::arg("ptx_version"),
        "Whether nlm_gaussian runs its tensor-core kernels on a device of this compute capability major when "
        "cudaFuncGetAttributes reports these binary and PTX versions for them (10 * major + minor).");
}
