// The kernel table of one emulated kernel file: the harness (tests/emu/mod.rs) generates a
// translation unit that includes the kernel file, then this header, then one EMU_KERNEL line per
// `extern "C" __global__` function it found. runtime.cpp's emu_launch looks kernels up by name.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

struct EmuKernelEntry {
    const char* name;
    // Calls the kernel with its arguments unpacked from cuLaunchKernel's convention: args[i]
    // points to the i-th argument's value.
    void (*invoke)(void** args);
    // __launch_bounds__'s maximum threads per block, 0 when the kernel has none.
    int max_threads;
    // The number of parameters and each one's size in bytes (what a CUDA graph copies when it
    // records a launch: tests/emu/fake_cuda/cuda.cpp).
    int param_count;
    const std::size_t* param_sizes;
};

template <typename F> struct EmuInvoker;

template <typename... A> struct EmuInvoker<void (*)(A...)> {
    static constexpr int count = sizeof...(A);
    // one extra element: a kernel without parameters still has an array
    static constexpr std::size_t sizes[sizeof...(A) + 1] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)..., 0};
    template <void (*F)(A...), std::size_t... I> static void unpack(void** args, std::index_sequence<I...>) {
        F(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
    }
    template <void (*F)(A...)> static void call(void** args) {
        unpack<F>(args, std::index_sequence_for<A...>{});
    }
};

#define EMU_KERNEL(NAME, BOUND)                                                                               \
    {#NAME, &EmuInvoker<decltype(&NAME)>::template call<&NAME>, (int)(BOUND), EmuInvoker<decltype(&NAME)>::count,    \
     EmuInvoker<decltype(&NAME)>::sizes},

extern const EmuKernelEntry emu_kernels[];
extern const int emu_kernel_count;
