// The host emulation's stand-in for CUDA's <cuda_bf16.h>: just what kernels/*.cu use, with the
// same bit-level semantics (bf16 = the high 16 bits of an IEEE fp32; conversions from fp32 round to
// nearest even, NaN stays NaN). tests/emu puts this folder first on the include path, so
// `#include <cuda_bf16.h>` in kernels/common.h lands here.
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    unsigned short __x;
};

// Two bf16 in one 32-bit word: x in the low 16 bits (the lower address), y in the high 16 bits, as
// CUDA's __nv_bfloat162.
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x;
    __nv_bfloat16 y;
};

inline unsigned int emu_float_bits(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}

inline float emu_bits_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// fp32 -> bf16, round to nearest, ties to even; a NaN keeps its sign and becomes a quiet NaN.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const unsigned int u = emu_float_bits(f);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.__x = (unsigned short)((u >> 16) | 0x0040u);
        return r;
    }
    const unsigned int lsb = (u >> 16) & 1u;
    r.__x = (unsigned short)((u + 0x7fffu + lsb) >> 16);
    return r;
}

inline float __bfloat162float(__nv_bfloat16 h) {
    return emu_bits_float((unsigned int)h.__x << 16);
}

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) {
    return h.__x;
}

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 r;
    r.__x = u;
    return r;
}

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    __nv_bfloat162 r;
    r.x = __float2bfloat16_rn(lo);
    r.y = __float2bfloat16_rn(hi);
    return r;
}
