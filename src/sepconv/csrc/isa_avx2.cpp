// The kernels of isa_impl.h for AVX2 + FMA: 8-float vectors, 16 registers. Compiled
// with the build's baseline flags plus this file's target pragma, so its code runs only where
// select_kernels (isa.cpp) found the CPU (and OS) to support AVX2 and FMA. Everything it defines lives
// in sepconv::avx2 with internal linkage; headers come before the pragma (see kernels.h).
#include <cstdint>

#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define SEPCONV_VL 8
#define SEPCONV_REGS 16
#define SEPCONV_STREAM 1
#define SEPCONV_ISA_NAME "avx2"
namespace sepconv {
namespace avx2 {
#include "isa_impl.h"
}  // namespace avx2
}  // namespace sepconv
#ifdef __clang__
#pragma clang attribute pop
#endif
#else
namespace sepconv {
namespace avx2 {
extern const Kernels table = {"avx2", 0, 0, 0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};  // not on this CPU
}  // namespace avx2
}  // namespace sepconv
#endif
