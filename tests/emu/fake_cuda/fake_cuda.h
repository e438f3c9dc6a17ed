// The emulated device's internal interface between its three fake libraries: libcuda.so
// (cuda.cpp: the driver API over the host emulation of the kernels) and libcublas.so /
// libcublasLt.so (cublas.cpp, cublaslt.cpp: reference products written from the cuBLAS
// documentation). Device memory is host memory: a CUdeviceptr is a host address. Work runs on
// the calling thread, in stream order, when it is enqueued, except while its stream is being
// captured into a graph, when it is recorded and runs at each launch of the graph.
#pragma once

#include <cstddef>

extern "C" {

// Runs run(data) now on `stream` (a CUstream, null for the legacy stream), or, while `stream` is
// being captured, records it as a node of the capture's graph, run at each launch of the graph.
// drop(data) is called once the work can never run again (after the run, or when the graph is
// destroyed). Returns a CUresult (0: CUDA_SUCCESS); on an error, drop(data) has been called.
int fakecuda_enqueue(void* stream, void (*run)(void* data), void* data, void (*drop)(void* data));

// 0 when [ptr, ptr + bytes) lies inside one live device allocation, else -1 (with bytes == 0:
// whether ptr is inside or at the end of one).
int fakecuda_check_range(unsigned long long ptr, size_t bytes);
}
