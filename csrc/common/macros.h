#pragma once
// Function qualifiers shared by CPU and CUDA code. Under nvcc the per-element maths in
// csrc/kernels/ is compiled for host and device; everywhere else (g++, the emulator) it is
// plain inline C++.
#if defined(__CUDACC__)
#define FR_HOST_DEVICE __host__ __device__ __forceinline__
#define FR_DEVICE __device__ __forceinline__
#elif defined(FR_CUDA_EMULATION)
#define FR_HOST_DEVICE inline
#define FR_DEVICE inline
#else
#define FR_HOST_DEVICE inline
#define FR_DEVICE inline
#endif
