// The compute kernels of one instruction set. Included by isa_avx512.cpp, isa_avx2.cpp and
// isa_generic.cpp, each inside its own namespace (sepconv::avx512, ...) after its target pragma,
// with SEPCONV_VL (floats per vector: 16 or 8), SEPCONV_REGS (vector registers: 32 or 16) and
// SEPCONV_STREAM (1: x86 streaming stores of that width) defined. No #include here and no std::
// call: every function is static (internal linkage) in the ISA's namespace, so no code compiled for
// one ISA can be shared with, or substituted by the linker for, another's (see kernels.h).
//
// Vectors are GCC/Clang vector extensions: `vec` is one register of the ISA (16 floats in a zmm,
// 8 in a ymm; pairs of SSE registers for the generic build), `half` 8 floats (an AVX-512 build's
// leftover 8-channel blocks).
//
// GEMM register blocking, from the vector width and register count: a block is MR rows x COLS
// columns, COLS = 16 x NP packed panels, NV = COLS / VL vectors per row; rows_for(NV) rows (the
// other registers hold the NV weight vectors and a broadcast): 6 x 16 for AVX2 (12 ymm
// accumulators), 6 x 64 for AVX-512 (24 zmm accumulators: per channel 6 broadcasts and 4 weight
// loads feed 24 FMAs, where 14 x 32 needed 14 + 2 for 28; on Zen 4 the 6 x 64 block ran a 32-deep
// GEMM 1.25x as fast warm, 1.5x with its output not in cache, and deep ones 1.1x, near the FMA
// peak). Leftover panels (N not a multiple of 64) run in blocks of 2 (14 rows) and 1.
//
// Depthwise (see fused_dwpw.cpp): steps of 4 output pixels x V vectors of channels (whole 64-byte
// lines), so each weight load serves four pixels and 4 V FMA chains run independently; the first
// and last columns sum their in-image taps pixel by pixel; leftover channels in narrower steps.

typedef int64_t i64;

struct Full { typedef float vec __attribute__((vector_size(SEPCONV_VL * 4))); static constexpr int VL = SEPCONV_VL; };
struct Half { typedef float vec __attribute__((vector_size(32))); static constexpr int VL = 8; };
typedef Full::vec vec;
constexpr int VL = SEPCONV_VL;
constexpr int NB = 16;                                  // floats per packed weight panel
constexpr int NP = VL >= NB ? 4 : 1;                    // panels per GEMM block
constexpr int COLS = NB * NP, NV = COLS / VL;           // columns, vectors per row of a block
// rows of a register block of J vectors per row: 6 for 64 columns, else as many as the registers
// hold (at most 14)
constexpr int rows_for(int J) {
  return J * VL >= 64 ? 6 : ((SEPCONV_REGS - 4) / J < 14 ? (SEPCONV_REGS - 4) / J : 14);
}
constexpr int MR = rows_for(NV);                        // rows per full block

static inline i64 imin(i64 a, i64 b) { return a < b ? a : b; }
static inline i64 imax(i64 a, i64 b) { return a > b ? a : b; }
template <class V> static inline V load(const float* p) { V v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
template <class V> static inline void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(v)); }
// x in every lane (not V{} + x: GCC keeps that addition of +0, an extra uop per broadcast)
template <class V> static inline V splat(float x) {
  if constexpr (sizeof(V) == 64) return V{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  else return V{x, x, x, x, x, x, x, x};
}
// keeps the compiler from deriving other addresses from p (hoisting every tap address out of a
// loop, one offset per GEMM row) and spilling them
template <class T> static inline void opaque(T*& p) { asm("" : "+r"(p)); }
// a store that bypasses the cache (p aligned to the vector's size), where the ISA has one
template <class V> static inline void stream_store(float* p, V v) {
#if SEPCONV_STREAM
  if constexpr (sizeof(V) == 64) { _mm512_stream_ps(p, (__m512)v); return; }
  if constexpr (sizeof(V) == 32) { _mm256_stream_ps(p, (__m256)v); return; }
#endif
  store(p, v);
}
// floor(a / b) for b > 0 (C++ division truncates toward zero)
static inline i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// ReLU (act 1) / ReLU6 (act 2) as torch.relu / F.relu6: NaN stays NaN (each test fails for NaN and
// keeps v), +/-inf and -0 as in PyTorch
static inline float act_scalar(float v, i64 act) {
  if (act == 1) return v < 0.f ? 0.f : v;
  if (act == 2) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}
template <class V> static inline V act_vec(V v, i64 act) {
  if (act == 0) return v;
  const V zero = splat<V>(0.f);
  v = v < zero ? zero : v;
  if (act == 2) { const V six = splat<V>(6.f); v = v > six ? six : v; }
  return v;
}

// ---------------------------------------------------------------------------------------------
// GEMM

// R rows of a (at stride lda) times kc rows of NPB weight panels (16 floats a row, panels pstride
// floats apart), added to the accumulators. Row 3b + i (i < 3) is read at base pointer b plus i x lda
// (x86 base + index x scale addressing): ceil(R / 3) pointers, kept opaque to the compiler, which
// otherwise kept one offset per row (14 for AVX-512) and spilled some of them inside the loop
template <int R, int NPB>
__attribute__((always_inline)) static inline void rows_x_panels(const float* a, i64 lda, i64 kc, const float* wp, i64 pstride,
                                                                 vec (*acc)[NPB * NB / VL]) {
  constexpr int J = NPB * NB / VL;
  constexpr int NBASE = (R + 2) / 3;
  const float* base[NBASE];
  for (int b = 0; b < NBASE; ++b) base[b] = a + 3 * b * lda;
  const float* w0 = wp;
  for (i64 c = 0; c < kc; ++c) {
    vec w[J];
    for (int j = 0; j < J; ++j) w[j] = load<vec>(w0 + (j * VL / NB) * pstride + (j * VL) % NB);
    for (int m = 0; m < R; ++m) {
      const float* p = base[m / 3];
      const vec x = splat<vec>(m % 3 == 0 ? p[0] : (m % 3 == 1 ? p[lda] : p[2 * lda]));
      for (int j = 0; j < J; ++j) acc[m][j] += x * w[j];
    }
    for (int b = 0; b < NBASE; ++b) { base[b] += 1; opaque(base[b]); }
    w0 += NB;
  }
}

// act(accumulators) of mr rows into out (rows at stride N, the first `width` columns)
template <int NPB>
__attribute__((always_inline)) static inline void store_rows(float* out, i64 N, i64 width, int mr, vec (*acc)[NPB * NB / VL], i64 act,
                                                              bool stream) {
  constexpr int J = NPB * NB / VL;
  alignas(64) float tmp[COLS];
  for (int m = 0; m < mr; ++m) {
    float* o = out + m * N;
    if (width == J * VL && stream && ((uintptr_t)o % sizeof(vec)) == 0) {
      for (int j = 0; j < J; ++j) stream_store(o + j * VL, act_vec(acc[m][j], act));
    } else if (width == J * VL) {
      for (int j = 0; j < J; ++j) store(o + j * VL, act_vec(acc[m][j], act));
    } else {
      for (int j = 0; j < J; ++j) store(tmp + j * VL, act_vec(acc[m][j], act));
      __builtin_memcpy(o, tmp, width * sizeof(float));
    }
  }
}

// P rows cut into ceil(P / R) steps of near-equal size (for R = 6, 6s and 5s for P = 49, not
// eight 6s and a 1): a step of few rows loads as many weights as a full one for a fraction of the
// multiply-adds
struct Steps {
  i64 base, extra;  // the first `extra` steps have base + 1 rows, the others base
  Steps(i64 P, int R) {
    const i64 n = imax(1, (P + R - 1) / R);
    base = P / n;
    extra = P % n;
  }
  int rows(i64 step) const { return (int)(base + (step < extra ? 1 : 0)); }
};

template <int NPB>
__attribute__((always_inline)) static inline void load_bias(const float* bias, i64 n0, vec (*acc)[NPB * NB / VL], int mr) {
  constexpr int J = NPB * NB / VL;
  vec b[J];
  for (int j = 0; j < J; ++j) b[j] = bias ? load<vec>(bias + n0 + j * VL) : splat<vec>(0.f);
  for (int m = 0; m < mr; ++m)
    for (int j = 0; j < J; ++j) acc[m][j] = b[j];
}

// act(acc) of R rows into out: unrolled for whole blocks with cached stores (the common case),
// else through store_rows (a partial block, or streaming stores)
template <int R, int NPB>
__attribute__((always_inline)) static inline void store_block(float* out, i64 N, i64 width, vec (*acc)[NPB * NB / VL], i64 act,
                                                               bool stream) {
  constexpr int J = NPB * NB / VL;
  if (width == J * VL && !stream) {
    for (int m = 0; m < R; ++m)
      for (int j = 0; j < J; ++j) store(out + m * N + j * VL, act_vec(acc[m][j], act));
  } else {
    store_rows<NPB>(out, N, width, R, acc, act, stream);
  }
}

// step.template operator()<mr>() with the runtime row count mr (1..R) as a compile-time one, so
// that a step's accumulators are a fixed-size array the compiler keeps in registers. The callers'
// lambdas are always_inline, as panel_blocks' are: called out of line, a 32-column GEMM ran 2.4x
// slower
template <int R, class F>
__attribute__((always_inline)) static inline void with_rows(int mr, const F& step) {
  if constexpr (R == 1) {
    step.template operator()<1>();
  } else {
    if (mr == R) step.template operator()<R>();
    else with_rows<R - 1>(mr, step);
  }
}

// block.template operator()<NPB>(nb) over the panels [nb_begin, nb_end): blocks of NP panels,
// then of 2 and 1 (N not a multiple of 16 NP)
template <class F>
__attribute__((always_inline)) static inline void panel_blocks(i64 nb_begin, i64 nb_end, const F& block) {
  for (i64 nb = nb_begin; nb < nb_end;) {
    const i64 left = nb_end - nb;
    if constexpr (NP >= 4) {
      if (left >= 4) {
        block.template operator()<4>(nb);
        nb += 4;
        continue;
      }
    }
    if constexpr (NP >= 2) {
      if (left >= 2) {
        block.template operator()<2>(nb);
        nb += 2;
        continue;
      }
    }
    block.template operator()<1>(nb);
    nb += 1;
  }
}

// One step of R rows, R known at compile time, so that the accumulators stay in registers from
// the bias (or partial sums) loaded to the results stored (with a runtime row count they were
// spilled to the stack and loaded back around the channel loop: 24 stores and loads per step, ~10%
// of a 32-deep GEMM): acc = bias (first channel block) or the partial sums in pp, += a x panels
// over kc channels, then the partial sums stored (not the last channel block) or act(acc) into out
template <int R, int NPB>
__attribute__((always_inline)) static inline void row_step(const float* a, i64 lda, i64 kc, const float* wp, i64 pstride,
                                                            const float* bias, i64 n0, bool first, bool last, float* pp,
                                                            float* out, i64 N, i64 width, i64 act, bool stream) {
  constexpr int J = NPB * NB / VL;
  vec acc[R][J];
  if (first) {
    load_bias<NPB>(bias, n0, acc, R);
  } else {
    for (int m = 0; m < R; ++m)
      for (int j = 0; j < J; ++j) acc[m][j] = load<vec>(pp + m * COLS + j * VL);
  }
  rows_x_panels<R, NPB>(a, lda, kc, wp, pstride, acc);
  if (!last) {
    for (int m = 0; m < R; ++m)
      for (int j = 0; j < J; ++j) store(pp + m * COLS + j * VL, acc[m][j]);
  } else {
    store_block<R, NPB>(out, N, width, acc, act, stream);
  }
}

// One block of NPB panels from nb of the GEMM (see Kernels::gemm), prefetching from *pf
template <int NPB>
static void gemm_block(const float* t, i64 lda, i64 P, i64 C, const float* wpack, i64 N, i64 nb, const float* bias, i64 act, bool stream,
                       float* out, const char*& pf, const char* pf_end, i64 per_step, float* part, i64 KC) {
  constexpr int R = rows_for(NPB * NB / VL);
  const i64 n0 = nb * NB, width = imin(NPB * NB, N - n0);
  const float* wpb = wpack + nb * C * NB;
  const Steps row_steps(P, R);
  for (i64 k0 = 0; k0 < C; k0 += KC) {
    const i64 kc = imin(KC, C - k0);
    const bool first = k0 == 0, last = k0 + kc >= C;
    for (i64 pm = 0, step = 0; pm < P; pm += row_steps.rows(step), ++step) {
      for (i64 i = 0; i < per_step && pf < pf_end; ++i, pf += 64) __builtin_prefetch(pf, 0, 2);
      with_rows<R>(row_steps.rows(step), [&]<int M>() __attribute__((always_inline)) {
        row_step<M, NPB>(t + pm * lda + k0, lda, kc, wpb + k0 * NB, C * NB, bias, n0, first, last, part + pm * COLS,
                         out + pm * N + n0, N, width, act, stream);
      });
    }
  }
}

// noinline: a variant of the caller that GCC inlined this into ran 1.6x slower (accumulators spilled)
__attribute__((noinline)) static void gemm(const float* t, i64 lda, i64 P, i64 C, const float* wpack, i64 N, i64 nb_begin, i64 nb_end,
                                           const float* bias, i64 act, bool stream, float* out, const char* pf,
                                           const char* pf_end, float* part, i64 kc) {
  const i64 KC = kc < C ? kc : C;
  // prefetch [pf, pf_end) into L2 spread evenly over the steps
  const i64 steps = imax(1, ((nb_end - nb_begin + NP - 1) / NP) * ((P + MR - 1) / MR) * ((C + KC - 1) / KC));
  const i64 per_step = pf_end > pf ? ((pf_end - pf) / 64 + steps - 1) / steps : 0;
  panel_blocks(nb_begin, nb_end, [&]<int NPB>(i64 nb) __attribute__((always_inline)) {
    gemm_block<NPB>(t, lda, P, C, wpack, N, nb, bias, act, stream, out, pf, pf_end, per_step, part, KC);
  });
}

// One step of R pixels (R at compile time, as row_step) of conv_row_block: kh tap rows of row_len
// channels each, summed into registers from the bias, then act(acc) stored
template <int R, int NPB>
__attribute__((always_inline)) static inline void conv_step(const float* a, i64 pixel_step, i64 kh, i64 row_len, i64 tap_step,
                                                             const float* wpb, i64 K, const float* bias, i64 n0, float* out, i64 N,
                                                             i64 width, i64 act, bool stream) {
  constexpr int J = NPB * NB / VL;
  vec acc[R][J];
  load_bias<NPB>(bias, n0, acc, R);
  for (i64 i = 0; i < kh; ++i)
    rows_x_panels<R, NPB>(a + i * tap_step, pixel_step, row_len, wpb + i * row_len * NB, K * NB, acc);
  store_block<R, NPB>(out, N, width, acc, act, stream);
}

template <int NPB>
static void conv_row_block(const float* a, i64 count, i64 pixel_step, i64 kh, i64 row_len, i64 tap_step, const float* wpb,
                           i64 K, i64 N, i64 n0, const float* bias, i64 act, bool stream, float* out) {
  constexpr int R = rows_for(NPB * NB / VL);
  const Steps col_steps(count, R);
  const i64 width = imin(NPB * NB, N - n0);
  for (i64 ow = 0, step = 0; ow < count; ow += col_steps.rows(step), ++step)
    with_rows<R>(col_steps.rows(step), [&]<int M>() __attribute__((always_inline)) {
      conv_step<M, NPB>(a + ow * pixel_step, pixel_step, kh, row_len, tap_step, wpb, K, bias, n0, out + ow * N + n0, N, width,
                        act, stream);
    });
}

__attribute__((noinline)) static void conv_row(const float* a, i64 count, i64 pixel_step, i64 kh, i64 row_len, i64 tap_step,
                                               const float* wpack, i64 K, i64 N, const float* bias, i64 act, bool stream,
                                               float* out) {
  panel_blocks(0, (N + NB - 1) / NB, [&]<int NPB>(i64 nb) __attribute__((always_inline)) {
    conv_row_block<NPB>(a, count, pixel_step, kh, row_len, tap_step, wpack + nb * K * NB, K, N, nb * NB, bias, act, stream, out);
  });
}

// ---------------------------------------------------------------------------------------------
// Depthwise


// The interior (no padding taps) of one output row for nblk blocks of V vectors (of type T) from
// the block start: `count` pixels, the first one's top-left tap at `in` (the next tap xs floats
// on), outputs at stride oC. Four pixels at a time share each weight load, giving 4 x V
// independent FMA chains. SUM: each output channel sums R inputs (channels g C + c, g < R), weights
// (taps, R, C); otherwise R = 1.
template <class T, int KH, int KW, int V, bool SUM>
static inline void dw_interior(const float* in, i64 rowC, i64 C, i64 xs, i64 R, i64 sC, const float* w, const float* db, i64 act,
                               float* out, i64 oC, i64 count, i64 nblk, i64 nrows) {
  typedef typename T::vec v_t;
  constexpr int L = T::VL;
  const i64 s2 = 2 * sC, s3 = 3 * sC;
  // steps of four pixels; a run of 4 or more whose length is not a multiple of 4 ends with a step
  // over its last four pixels, overlapping the previous step (its outputs are stored, not added, so
  // computing them twice is harmless): the per-pixel loop below, several times slower per pixel, was
  // 1-3 pixels of every 6-14 in the rows of 8x8 and 16x16 images
  const i64 steps_end = count >= 4 ? count : 0;
  for (i64 s4 = 0; s4 < steps_end; s4 += 4) {
    const i64 q = imin(s4, count - 4);
    for (i64 cb = 0; cb < nblk; ++cb) {
      const i64 co = cb * V * L;
      v_t a0[V], a1[V], a2[V], a3[V];
      for (int v = 0; v < V; ++v) a0[v] = a1[v] = a2[v] = a3[v] = db ? load<v_t>(db + co + v * L) : splat<v_t>(0.f);
      const float* row = in + q * sC + co;
      const float* wr = w + co;
#pragma GCC unroll 16
      for (int i = 0; i < KH; ++i) {
        if (i == nrows) break;
        const float* r = row;
#pragma GCC unroll 16
        for (int j = 0; j < KW; ++j) {
          if constexpr (SUM) {
            for (i64 gg = 0; gg < R; ++gg)
              for (int v = 0; v < V; ++v) {
                const i64 o = gg * C + v * L;
                const v_t wv = load<v_t>(wr + o);
                a0[v] += load<v_t>(r + o) * wv;
                a1[v] += load<v_t>(r + sC + o) * wv;
                a2[v] += load<v_t>(r + s2 + o) * wv;
                a3[v] += load<v_t>(r + s3 + o) * wv;
              }
            wr += R * C;
          } else {
            for (int v = 0; v < V; ++v) {
              const v_t wv = load<v_t>(wr + v * L);
              a0[v] += load<v_t>(r + v * L) * wv;
              a1[v] += load<v_t>(r + sC + v * L) * wv;
              a2[v] += load<v_t>(r + s2 + v * L) * wv;
              a3[v] += load<v_t>(r + s3 + v * L) * wv;
            }
            wr += C;
          }
          opaque(wr);
          r += xs;
          opaque(r);
        }
        row += rowC;
        opaque(row);
      }
      float* o = out + co;
      for (int v = 0; v < V; ++v) {
        store(o + q * oC + v * L, act_vec(a0[v], act));
        store(o + (q + 1) * oC + v * L, act_vec(a1[v], act));
        store(o + (q + 2) * oC + v * L, act_vec(a2[v], act));
        store(o + (q + 3) * oC + v * L, act_vec(a3[v], act));
      }
    }
  }
  for (i64 q = steps_end; q < count; ++q)
    for (i64 cb = 0; cb < nblk; ++cb) {
      const i64 co = cb * V * L;
      v_t a[V];
      for (int v = 0; v < V; ++v) a[v] = db ? load<v_t>(db + co + v * L) : splat<v_t>(0.f);
      const float* p = in + q * sC + co;
      for (int i = 0; i < nrows; ++i)
        for (int j = 0; j < KW; ++j)
          for (i64 gg = 0; gg < (SUM ? R : 1); ++gg)
            for (int v = 0; v < V; ++v)
              a[v] += load<v_t>(p + i * rowC + j * xs + gg * C + v * L) *
                      load<v_t>(w + co + ((i * KW + j) * (SUM ? R : 1) + gg) * C + v * L);
      for (int v = 0; v < V; ++v) store(out + co + q * oC + v * L, act_vec(a[v], act));
    }
}

// One output pixel for V vectors of channels from c0, near the image border (or for a kernel size
// without a fixed-size path): only the taps inside the image, their range computed once.
template <class T, int V>
static inline void dw_edge(const float* xb, const float* dw, const float* db, i64 act, const Geometry& g, i64 oh, i64 ow, i64 c0,
                           float* out) {
  typedef typename T::vec v_t;
  constexpr int L = T::VL;
  const i64 ih0 = oh * g.sh - g.pt, iw0 = ow * g.sw - g.pl;
  const i64 i0 = imax(0, -ih0), i1 = imin(g.kh, g.H - ih0);
  const i64 j0 = imax(0, -iw0), j1 = imin(g.kw, g.W - iw0);
  v_t a[V];
  for (int v = 0; v < V; ++v) a[v] = db ? load<v_t>(db + c0 + v * L) : splat<v_t>(0.f);
  for (i64 i = i0; i < i1; ++i)
    for (i64 j = j0; j < j1; ++j)
      for (i64 gg = 0; gg < g.R; ++gg) {
        const float* x = xb + ((ih0 + i) * g.W + iw0 + j) * g.xs + gg * g.C + c0;
        const float* w = dw + ((i * g.kw + j) * g.R + gg) * g.C + c0;
        for (int v = 0; v < V; ++v) a[v] += load<v_t>(x + v * L) * load<v_t>(w + v * L);
      }
  for (int v = 0; v < V; ++v) store(out + v * L, act_vec(a[v], act));
}

// nblk blocks of V vectors [c0, c0 + V L nblk) of the depthwise conv over the output pixels
// [p0, p1) of one image, into t[(p - p0) * tC + c]: border pixels by dw_edge, each row's interior
// run by dw_interior. KH = KW = 0: any kernel size, all pixels by dw_edge.
template <class T, int KH, int KW, int V, bool SUM>
static void dw_block(const float* xb, const float* dw, const float* db, i64 act, const Geometry& g, i64 p0, i64 p1, i64 c0,
                     float* t, i64 nblk) {
  constexpr int L = T::VL;
  const i64 C = g.C, tC = g.tC, W = g.W, xs = g.xs, R = g.R;
  const i64 ow_lo = imin(g.Wo, (g.pl + g.sw - 1) / g.sw);
  // floor: with W + pl < kw (only right padding completes a pixel's taps) no column is interior
  const i64 ow_hi = imax(ow_lo, imin(g.Wo, floor_div(W + g.pl - g.kw, g.sw) + 1));
  i64 p = p0;
  while (p < p1) {
    const i64 oh = p / g.Wo, ow_begin = p % g.Wo, ow_end = imin(g.Wo, ow_begin + (p1 - p));
    const i64 ih0 = oh * g.sh - g.pt;
    float* trow = t + (p - p0 - ow_begin) * tC + c0;
    // the tap rows [i0, i1) inside the image; the run [lo, hi) of columns with all their taps
    // inside it (a border row's run too, over its in-image tap rows) goes to dw_interior
    const i64 i0 = imax(0, -ih0), i1 = imin(KH, g.H - ih0);
    i64 lo = ow_begin, hi = ow_begin;
    if (KH > 0 && i1 > i0) {
      lo = imin(imax(ow_begin, ow_lo), ow_end);
      hi = imax(lo, imin(ow_end, ow_hi));
    }
    for (i64 cb = 0; cb < nblk; ++cb) {
      const i64 cc = c0 + cb * V * L;
      for (i64 ow = ow_begin; ow < lo; ++ow) dw_edge<T, V>(xb, dw, db, act, g, oh, ow, cc, trow + ow * tC + cb * V * L);
      for (i64 ow = hi; ow < ow_end; ++ow) dw_edge<T, V>(xb, dw, db, act, g, oh, ow, cc, trow + ow * tC + cb * V * L);
    }
    if (KH > 0 && hi > lo)
      dw_interior<T, (KH > 0 ? KH : 1), (KW > 0 ? KW : 1), V, SUM>(
          xb + ((ih0 + i0) * W + lo * g.sw - g.pl) * xs + c0, W * xs, C, xs, R, g.sw * xs, dw + i0 * g.kw * R * C + c0,
          db ? db + c0 : nullptr, act, trow + lo * tC, tC, hi - lo, nblk, i1 - i0);
    p += ow_end - ow_begin;
  }
}

// dw_block with the fixed-size paths of 3x3 and 5x5 kernels (and of sums over R > 1 inputs)
template <class T, int V, bool SUM>
static void dw_blocks_(const float* xb, const float* dw, const float* db, i64 act, const Geometry& g, i64 p0, i64 p1, i64 c0,
                       float* t, i64 nblk) {
  if (g.kh == 3 && g.kw == 3) dw_block<T, 3, 3, V, SUM>(xb, dw, db, act, g, p0, p1, c0, t, nblk);
  else if (g.kh == 5 && g.kw == 5) dw_block<T, 5, 5, V, SUM>(xb, dw, db, act, g, p0, p1, c0, t, nblk);
  else dw_block<T, 0, 0, V, SUM>(xb, dw, db, act, g, p0, p1, c0, t, nblk);
}

template <class T, int V>
static void dw_blocks(const float* xb, const float* dw, const float* db, i64 act, const Geometry& g, i64 p0, i64 p1, i64 c0,
                      float* t, i64 nblk) {
  if (g.R > 1) dw_blocks_<T, V, true>(xb, dw, db, act, g, p0, p1, c0, t, nblk);
  else dw_blocks_<T, V, false>(xb, dw, db, act, g, p0, p1, c0, t, nblk);
}

// The channels [c0, c0 + NC) left over by the 8-channel vectors (fewer than 8), pixel by pixel
// with one accumulator per channel, over in-image taps.
template <int NC>
static void dw_scalar(const float* xb, const float* dw, const float* db, i64 act, const Geometry& g, i64 p0, i64 p1, i64 c0,
                      float* t) {
  float a[NC];
  i64 oh = p0 / g.Wo, ow = p0 % g.Wo;
  for (i64 p = p0; p < p1; ++p) {
    const i64 ih0 = oh * g.sh - g.pt, iw0 = ow * g.sw - g.pl;
    const i64 i0 = imax(0, -ih0), i1 = imin(g.kh, g.H - ih0);
    const i64 j0 = imax(0, -iw0), j1 = imin(g.kw, g.W - iw0);
    for (i64 c = 0; c < NC; ++c) a[c] = db ? db[c0 + c] : 0.f;
    for (i64 i = i0; i < i1; ++i)
      for (i64 j = j0; j < j1; ++j)
        for (i64 gg = 0; gg < g.R; ++gg) {
          const float* x = xb + ((ih0 + i) * g.W + iw0 + j) * g.xs + gg * g.C + c0;
          const float* w = dw + ((i * g.kw + j) * g.R + gg) * g.C + c0;
          for (i64 c = 0; c < NC; ++c) a[c] += x[c] * w[c];
        }
    float* o = t + (p - p0) * g.tC + c0;
    for (i64 c = 0; c < NC; ++c) o[c] = act_scalar(a[c], act);
    if (++ow == g.Wo) { ow = 0; ++oh; }
  }
}

// channels in blocks of two full vectors (whole 64-byte lines), then one full vector, then (AVX-512)
// 8 channels, then one by one
__attribute__((noinline)) static void depthwise(const float* xb, const float* dw, const float* db, i64 act, const Geometry& g,
                                                i64 p0, i64 p1, float* t) {
  constexpr int V2 = 2;  // two vectors: 4 pixels x 2 = 8 independent FMA chains (4 leave half the FMA units idle)
  const i64 wide = V2 * VL, n2 = g.C / wide;
  if (n2 > 0) dw_blocks<Full, V2>(xb, dw, db, act, g, p0, p1, 0, t, n2);
  i64 c0 = n2 * wide;
  if (V2 == 2 && g.C - c0 >= VL) {
    dw_blocks<Full, 1>(xb, dw, db, act, g, p0, p1, c0, t, 1);
    c0 += VL;
  }
  if (VL > 8 && g.C - c0 >= 8) {
    dw_blocks<Half, 1>(xb, dw, db, act, g, p0, p1, c0, t, 1);
    c0 += 8;
  }
  switch (g.C - c0) {
    case 1: dw_scalar<1>(xb, dw, db, act, g, p0, p1, c0, t); break;
    case 2: dw_scalar<2>(xb, dw, db, act, g, p0, p1, c0, t); break;
    case 3: dw_scalar<3>(xb, dw, db, act, g, p0, p1, c0, t); break;
    case 4: dw_scalar<4>(xb, dw, db, act, g, p0, p1, c0, t); break;
    case 5: dw_scalar<5>(xb, dw, db, act, g, p0, p1, c0, t); break;
    case 6: dw_scalar<6>(xb, dw, db, act, g, p0, p1, c0, t); break;
    case 7: dw_scalar<7>(xb, dw, db, act, g, p0, p1, c0, t); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Separable filter

// dst[w] = sum_t k[t] * row(t)[w] for w < n: 4 vectors per step, then one vector, then (AVX-512)
// 8 floats, then one by one
template <class Row>
static inline void weighted_rows(Row row, const float* k, i64 taps, float* dst, i64 n) {
  i64 w = 0;
  for (; w + 4 * VL <= n; w += 4 * VL) {
    vec a0 = splat<vec>(0.f), a1 = a0, a2 = a0, a3 = a0;
    for (i64 t = 0; t < taps; ++t) {
      const vec c = splat<vec>(k[t]);
      const float* s = row(t) + w;
      a0 += c * load<vec>(s);
      a1 += c * load<vec>(s + VL);
      a2 += c * load<vec>(s + 2 * VL);
      a3 += c * load<vec>(s + 3 * VL);
    }
    store(dst + w, a0);
    store(dst + w + VL, a1);
    store(dst + w + 2 * VL, a2);
    store(dst + w + 3 * VL, a3);
  }
  for (; w + VL <= n; w += VL) {
    vec a = splat<vec>(0.f);
    for (i64 t = 0; t < taps; ++t) a += splat<vec>(k[t]) * load<vec>(row(t) + w);
    store(dst + w, a);
  }
  if (VL > 8 && w + 8 <= n) {
    Half::vec a = splat<Half::vec>(0.f);
    for (i64 t = 0; t < taps; ++t) a += splat<Half::vec>(k[t]) * load<Half::vec>(row(t) + w);
    store(dst + w, a);
    w += 8;
  }
  for (; w < n; ++w) {
    float a = 0.f;
    for (i64 t = 0; t < taps; ++t) a += k[t] * row(t)[w];
    dst[w] = a;
  }
}

static void filter_rows(const float* const* rows, const float* k, i64 taps, float* dst, i64 n) {
  weighted_rows([rows](i64 i) { return rows[i]; }, k, taps, dst, n);
}

static void filter_shift(const float* src, const float* k, i64 taps, float* dst, i64 n) {
  weighted_rows([src](i64 j) { return src + j; }, k, taps, dst, n);
}

// ---------------------------------------------------------------------------------------------
// Layout

// See Kernels::interleave. Three planes (an RGB input) have their own loop, which the compiler
// vectorizes with permutes; other counts pixel by pixel.
static void interleave(const float* src, i64 plane, i64 C, float* dst, i64 n) {
  if (C == 3) {
    const float* __restrict r = src;
    const float* __restrict g = src + plane;
    const float* __restrict b = src + 2 * plane;
    float* __restrict d = dst;
    for (i64 p = 0; p < n; ++p) {
      d[3 * p] = r[p];
      d[3 * p + 1] = g[p];
      d[3 * p + 2] = b[p];
    }
    return;
  }
  for (i64 p = 0; p < n; ++p)
    for (i64 c = 0; c < C; ++c) dst[p * C + c] = src[c * plane + p];
}

static void fence() {
#if SEPCONV_STREAM
  _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
}

extern const Kernels table = {SEPCONV_ISA_NAME, VL, MR, COLS, depthwise, gemm, conv_row, filter_rows, filter_shift, interleave,
                               fence};
