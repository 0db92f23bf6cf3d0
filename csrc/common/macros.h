#pragma once
// Function qualifier for the per-element maths in csrc/kernels/: compiled for host and device
// under nvcc; plain inline C++ everywhere else (g++, the CUDA emulator).
#if defined(__CUDACC__)
#define FR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FR_HOST_DEVICE inline
#endif
