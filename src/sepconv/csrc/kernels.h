// The interface between the torch-facing translation units (argument checks, threads, buffers:
// fused_dwpw.cpp, dense.cpp, separable_filter.cpp) and the per-ISA compute kernels
// (isa_avx512.cpp, isa_avx2.cpp, isa_generic.cpp, each isa_impl.h compiled in its own namespace
// for its own instruction set). Plain C++ types only: no torch, no std templates, no inline
// functions, so that nothing here can be compiled twice under different target flags and merged by
// the linker (an inline function compiled with AVX-512 in one file and without in another is one
// COMDAT symbol: the linker keeps either copy, and the AVX2 path could end up running AVX-512
// instructions).
#pragma once
#include <cstdint>

namespace sepconv {

// C: the channels a depthwise pass produces (and the stride of its weights); tC: the output's row
// stride (C x depth multiplier in the fused kernel's tile); xs: the input's pixel stride (C for a
// plain depthwise conv); R: inputs summed per output channel (channels g C + c, g < R, of the
// input; weights (kh x kw, R, C)): 1 for a depthwise conv, > 1 for a blueprint layer's grouped conv
struct Geometry {
  int64_t H, W, C, tC, Ho, Wo, kh, kw, sh, sw, pt, pl, xs, R;
};

// One instruction set's kernels and register blocking (the GEMM weights are packed as
// (ceil(N / 16), K, 16) panels for every ISA, so a model packed once runs on any of them).
struct Kernels {
  const char* name;  // "avx512", "avx2", "generic"
  int vl;            // floats per vector
  int mr;            // GEMM rows per register block
  int cols;          // GEMM output columns per register block (16 x panels per block)
  // the depthwise conv of output pixels [p0, p1) of one image into t (rows at stride g.tC); with
  // g.R > 1, each output channel sums R of them (see Geometry)
  void (*depthwise)(const float* xb, const float* dw, const float* db, int64_t act, const Geometry& g, int64_t p0,
                    int64_t p1, float* t);
  // out[p, n] = act(bias[n] + sum_c t[p, c] w[c, n]), p < P (rows of t at stride lda), n in the
  // panels [nb_begin, nb_end); channel sums in blocks of kc channels (partial sums in part: P x
  // cols floats) when C > kc
  void (*gemm)(const float* t, int64_t lda, int64_t P, int64_t C, const float* wpack, int64_t N, int64_t nb_begin, int64_t nb_end,
               const float* bias, int64_t act, bool stream, float* out, const char* pf, const char* pf_end, float* part,
               int64_t kc);
  // the interior run of one output row of an implicit-GEMM convolution: `count` pixels whose
  // patches are kh rows of `row_len` contiguous floats from a (the next tap row at a + tap_step,
  // the next pixel at a + pixel_step), against the K-deep panels wpack; outputs at stride N
  void (*conv_row)(const float* a, int64_t count, int64_t pixel_step, int64_t kh, int64_t row_len, int64_t tap_step,
                   const float* wpack, int64_t K, int64_t N, const float* bias, int64_t act, bool stream, float* out);
  // dst[w] = sum_t k[t] rows[t][w], w < n (the separable filter's vertical pass)
  void (*filter_rows)(const float* const* rows, const float* k, int64_t taps, float* dst, int64_t n);
  // dst[w] = sum_t k[t] src[w + t], w < n (its horizontal pass)
  void (*filter_shift)(const float* src, const float* k, int64_t taps, float* dst, int64_t n);
  // dst[p C + c] = src[c plane + p], p < n, c < C: n pixels of C planes interleaved (one row of
  // an NCHW image to NHWC)
  void (*interleave)(const float* src, int64_t plane, int64_t C, float* dst, int64_t n);
  // orders streaming stores before the caller publishes the output (a no-op without them)
  void (*fence)();
};

// each ISA's table: data, not code, so reading it runs nothing of that ISA
namespace avx512 { extern const Kernels table; }
namespace avx2 { extern const Kernels table; }
namespace generic { extern const Kernels table; }

}  // namespace sepconv
