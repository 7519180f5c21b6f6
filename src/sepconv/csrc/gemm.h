// The register-blocked GEMM shared by the C++ kernels: out = act(t @ w + bias), t row-major
// (rows at stride C), w prepacked as (ceil(N / 16), C, 16) panels (see FusedSeparableConv2d).
#pragma once
#include <algorithm>
#include <cstring>

#include "common.h"

namespace sepconv {

constexpr int MR = 6;
// streaming stores only for outputs of at least STREAM_MIN_BYTES (smaller ones stay in L3 for the
// next layer: a 3.2 MB output written around the cache made 32->64 @112, batch 1, 11% slower) of
// GEMMs over at most STREAM_MAX_C channels (for deeper ones they measured no faster)
constexpr int64_t STREAM_MAX_C = 384, STREAM_MIN_BYTES = int64_t(4) << 20;
inline bool streams(int64_t C, int64_t out_bytes) { return C <= STREAM_MAX_C && out_bytes >= STREAM_MIN_BYTES; }
constexpr int NB = 16;
// the GEMM sums over channels in blocks of KC_BLOCK when C > SPLIT_MIN_C (see gemm)
constexpr int64_t SPLIT_MIN_C = 384, KC_BLOCK = 256;

// ReLU (act 1) / ReLU6 (act 2) as torch.relu / F.relu6: NaN stays NaN. Each test is written so that
// NaN fails it and keeps v (`v > 0 ? v : 0`, or max(v, 0) in SIMD, returns 0 for NaN), and
// +/-inf and -0 come out as in PyTorch (relu(-0.) == -0.).
static inline float act_scalar(float v, int64_t act) {
  if (act == 1) return v < 0.f ? 0.f : v;
  if (act == 2) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}
static inline vec act_vec(vec v, int64_t act) {
  if (act == 0) return v;
  const vec zero = splat(0.f);
  v = v < zero ? zero : v;
  if (act == 2) { const vec six = splat(6.f); v = v > six ? six : v; }
  return v;
}

// R rows (pixels) of t at stride C times kc rows of a weight panel (16 floats each), added to the
// accumulators
template <int R>
__attribute__((always_inline)) static inline void rows_x_panel(const float* a, int64_t C, int64_t kc, const float* wp, vec* a0, vec* a1) {
  for (int64_t c = 0; c < kc; ++c) {
    const vec w0 = load(wp + c * NB), w1 = load(wp + c * NB + VL);
    for (int m = 0; m < R; ++m) {
      const vec x = splat(a[m * C + c]);
      a0[m] += x * w0;
      a1[m] += x * w1;
    }
  }
}

// rows_x_panel for mr (1..MR) rows
__attribute__((always_inline)) static inline void rows_x_panel_n(int mr, const float* a, int64_t C, int64_t kc, const float* wp,
                                                                  vec* a0, vec* a1) {
  switch (mr) {
    case 1: rows_x_panel<1>(a, C, kc, wp, a0, a1); break;
    case 2: rows_x_panel<2>(a, C, kc, wp, a0, a1); break;
    case 3: rows_x_panel<3>(a, C, kc, wp, a0, a1); break;
    case 4: rows_x_panel<4>(a, C, kc, wp, a0, a1); break;
    case 5: rows_x_panel<5>(a, C, kc, wp, a0, a1); break;
    default: rows_x_panel<MR>(a, C, kc, wp, a0, a1); break;
  }
}

// act(accumulators) of mr rows into out (rows at stride N, the first `width` <= 16 columns);
// stream: stores bypass the cache
__attribute__((always_inline)) static inline void store_rows(float* out, int64_t N, int64_t width, int mr, const vec* a0,
                                                              const vec* a1, int64_t act, bool stream) {
  alignas(64) float tmp[NB];
  for (int m = 0; m < mr; ++m) {
    float* o = out + m * N;
    const vec r0 = act_vec(a0[m], act), r1 = act_vec(a1[m], act);
    if (width == NB && stream && ((uintptr_t)o & 31) == 0) {
      stream_store(o, r0);
      stream_store(o + VL, r1);
    } else if (width == NB) {
      store(o, r0);
      store(o + VL, r1);
    } else {
      store(tmp, r0);
      store(tmp + VL, r1);
      std::memcpy(o, tmp, width * sizeof(float));
    }
  }
}

// P rows cut into ceil(P / 6) steps of near-equal size (6s and 5s for P = 49, not eight 6s and a
// 1): a step of few rows loads as many weights as a full one for a fraction of its multiply-adds.
struct Steps {
  int64_t base, extra;  // the first `extra` steps have base + 1 rows, the others base
  explicit Steps(int64_t P) {
    const int64_t n = std::max<int64_t>(1, (P + MR - 1) / MR);
    base = P / n;
    extra = P % n;
  }
  int rows(int64_t step) const { return (int)(base + (step < extra ? 1 : 0)); }
};

// out[p, n] = act(bias[n] + sum_c t[p, c] w[c, n]) for p < P (rows of t at stride C) and the n of the
// weight panels [nb_begin, nb_end) (out rows at stride N). stream:
// stores bypass the cache. A weight panel (C x 16) is reused by every step of the tile (steps of
// near-equal size <= 6 rows, see Steps). For C > 384
// the sum runs in blocks of 256 channels, partial sums parked in `part` (P x 16 floats), so the
// block's 16 KiB of panel stays in L1 across the tile's steps instead of streaming from L2 in
// every step (measured 3-9% faster for 512->1024 and 1024->1024 with two threads, equal with
// one; blocks of 128 were slower).
// noinline: a variant of the caller that GCC inlined this into ran 1.6x slower (accumulators spilled)
__attribute__((noinline)) static void gemm(const float* t, int64_t P, int64_t C, const float* wpack, int64_t N, int64_t nb_begin,
                                           int64_t nb_end, const float* bias, int64_t act, bool stream, float* out, const char* pf,
                                           const char* pf_end, float* part) {
  const int64_t KC = C > SPLIT_MIN_C ? KC_BLOCK : C;
  // prefetch [pf, pf_end) into L2 spread evenly over the steps
  const int64_t steps = (nb_end - nb_begin) * ((P + MR - 1) / MR) * ((C + KC - 1) / KC);
  const int64_t per_step = pf_end > pf ? ((pf_end - pf) / 64 + steps - 1) / steps : 0;
  const Steps row_steps(P);
  for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
    const int64_t n0 = nb * NB, width = std::min<int64_t>(NB, N - n0);
    const float* wpb = wpack + nb * C * NB;
    const vec b0 = bias ? load(bias + n0) : splat(0.f), b1 = bias ? load(bias + n0 + VL) : splat(0.f);
    for (int64_t k0 = 0; k0 < C; k0 += KC) {
      const int64_t kc = std::min(KC, C - k0);
      const bool first = k0 == 0, last = k0 + kc >= C;
      const float* wp = wpb + k0 * NB;
      for (int64_t pm = 0, step = 0; pm < P; pm += row_steps.rows(step), ++step) {
        for (int64_t i = 0; i < per_step && pf < pf_end; ++i, pf += 64) __builtin_prefetch(pf, 0, 2);
        const int mr = row_steps.rows(step);  // rows in this step
        vec a0[MR], a1[MR];
        float* pp = part + pm * NB;
        for (int m = 0; m < mr; ++m) {
          a0[m] = first ? b0 : load(pp + m * NB);
          a1[m] = first ? b1 : load(pp + m * NB + VL);
        }
        const float* a = t + pm * C + k0;
        rows_x_panel_n(mr, a, C, kc, wp, a0, a1);
        if (!last) {
          for (int m = 0; m < mr; ++m) { store(pp + m * NB, a0[m]); store(pp + m * NB + VL, a1[m]); }
          continue;
        }
        store_rows(out + pm * N + n0, N, width, mr, a0, a1, act, stream);
      }
    }
  }
}

}  // namespace sepconv
