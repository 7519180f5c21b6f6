// The kernels of isa_impl.h with the build's baseline flags only (8-float vector extensions, i.e.
// pairs of SSE registers on x86-64 without AVX, NEON elsewhere): the path of a CPU without AVX2 +
// FMA. Everything it defines lives in sepconv::generic with internal linkage (see kernels.h).
#include <cstdint>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#define SEPCONV_VL 8
#define SEPCONV_REGS 16
#define SEPCONV_STREAM 0
#define SEPCONV_ISA_NAME "generic"
namespace sepconv {
namespace generic {
#include "isa_impl.h"
}  // namespace generic
}  // namespace sepconv
