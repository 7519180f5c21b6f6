// The GEMM's policy shared by the torch-facing translation units; the GEMM itself is each ISA's
// Kernels::gemm (isa_impl.h): out = act(t @ w + bias), t row-major (rows at stride C), w prepacked
// as (ceil(N / 16), C, 16) panels (see FusedSeparableConv2d), the same packing for every ISA.
#pragma once
#include "common.h"

namespace sepconv {

constexpr int NB = 16;  // floats per packed weight panel
// streaming stores only for outputs of at least STREAM_MIN_BYTES (smaller ones stay in L3 for the
// next layer: a 3.2 MB output written around the cache made 32->64 @112, batch 1, 11% slower) of
// GEMMs over at most STREAM_MAX_C channels (for deeper ones they measured no faster)
constexpr int64_t STREAM_MAX_C = 384, STREAM_MIN_BYTES = int64_t(4) << 20;
inline bool streams(int64_t C, int64_t out_bytes) { return C <= STREAM_MAX_C && out_bytes >= STREAM_MIN_BYTES; }

}  // namespace sepconv
