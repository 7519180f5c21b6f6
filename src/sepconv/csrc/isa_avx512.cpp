// The kernels of isa_impl.h for AVX-512 (F, VL, BW, DQ): 16-float vectors, 32 registers. Compiled
// with the build's baseline flags plus this file's target pragma, so its code runs only where
// select_kernels (isa.cpp) found the CPU (and OS) to support AVX-512. Everything it defines lives
// in sepconv::avx512 with internal linkage; headers come before the pragma (see kernels.h).
#include <cstdint>

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#endif
#define SEPCONV_VL 16
#define SEPCONV_REGS 32
#define SEPCONV_STREAM 1
#define SEPCONV_ISA_NAME "avx512"
namespace sepconv {
namespace avx512 {
#include "isa_impl.h"
}  // namespace avx512
}  // namespace sepconv
#ifdef __clang__
#pragma clang attribute pop
#endif
#else
namespace sepconv {
namespace avx512 {
extern const Kernels table = {"avx512", 0, 0, 0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};  // not on this CPU
}  // namespace avx512
}  // namespace sepconv
#endif
