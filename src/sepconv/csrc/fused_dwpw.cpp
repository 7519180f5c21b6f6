// Fused depthwise + pointwise convolution for inference on CPU (float32, NHWC / channels_last).
//
// Work is split into tiles: ranges of output pixels of one image, sized so that their depthwise
// result (pixels x C floats) stays in L2, and numerous enough to keep every thread busy. For each
// tile the depthwise conv (+ bias, activation) is computed into a thread-local buffer, which a
// register-blocked GEMM against the pointwise weights consumes at once: the intermediate tensor
// never goes to memory. Threads claim tiles one at a time (parallel_claim, common.h), each the
// next one before its current tile's GEMM, during which it prefetches that tile's input rows into
// L2, so the depthwise pass (otherwise waiting on DRAM at batch 8, and not overlapped with
// anything) finds its input in cache: 10-20% off the shallow layers there.
//
// Depthwise: steps of 4 output pixels x 16 channels (whole 64-byte lines), so each weight load
// serves four pixels and eight FMA chains run independently; a step runs over all channel blocks
// before the next pixels, so the input is read as contiguous runs of whole pixels (a loop over
// channel blocks outside the pixels, touching one line in four of a 64-channel image per pass,
// measured 10-45% slower at batch 8, where the input comes from DRAM). In the first and last
// rows the same steps sum over the in-image tap rows only (a per-pixel path for them was 2.6x
// slower per pixel: 27% of a 14x14 image); the first and last columns sum their in-image taps
// pixel by pixel. GEMM: 6 pixels x 16 output channels of accumulators (12 vector registers)
// against weights prepacked as (ceil(N / 16), C, 16) panels, reading the tile in place; a large
// output of a shallow GEMM is written with streaming stores (it would only evict the next tile's
// data from cache otherwise).
//
// A depth multiplier M runs the depthwise pass M times over the same input rows, each with its
// own filters, into channels [m C, (m + 1) C) of the tile (PyTorch orders them c M + m; the
// pointwise weights are packed in the tile's order), so vectors always cover adjacent input
// channels. The GEMM then sums over M x C channels.
//
// Vectorization uses GCC/Clang vector extensions of 8 floats (one AVX2 register; pairs of SSE
// registers elsewhere). Threads: at::parallel_for, i.e. torch's own pool and thread count (with
// the OpenMP backend this file must be compiled with -fopenmp, or the loop runs on one thread).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "common.h"
#include "gemm.h"

using namespace sepconv;
// keeps the compiler from hoisting every tap address out of the loop (and spilling them)
template <class T> static inline void opaque(T*& p) { asm("" : "+r"(p)); }

// C: input channels (and the stride of the depthwise weights); tC: the tile buffer's row stride
// (C x depth multiplier)
struct Geometry { int64_t H, W, C, tC, Ho, Wo, kh, kw, sh, sw, pt, pl; };

// The interior (no padding taps) of one output row for nblk blocks of V 8-channel vectors from the
// block start: `count` pixels, the first one's top-left tap at `in`, outputs at stride C. Four
// pixels at a time share each weight load (read from L1), giving 4 x V independent FMA chains; with
// V = 2 each input load pair is one whole 64-byte line. The channel blocks are the inner loop.
template <int KH, int KW, int V>
static inline void dw_interior(const float* in, int64_t rowC, int64_t C, int64_t sC, const float* w, const float* db,
                               int64_t act, float* out, int64_t oC, int64_t count, int64_t nblk, int64_t nrows) {
  const int64_t s2 = 2 * sC, s3 = 3 * sC;
  int64_t q = 0;
  for (; q + 4 <= count; q += 4) {
    for (int64_t cb = 0; cb < nblk; ++cb) {
      const int64_t co = cb * V * VL;
      vec a0[V], a1[V], a2[V], a3[V];
      for (int v = 0; v < V; ++v) a0[v] = a1[v] = a2[v] = a3[v] = db ? load(db + co + v * VL) : splat(0.f);
      const float* row = in + q * sC + co;
      const float* wr = w + co;
#pragma GCC unroll 16
      for (int i = 0; i < KH; ++i) {
        if (i == nrows) break;
        const float* r = row;
#pragma GCC unroll 16
        for (int j = 0; j < KW; ++j) {
          for (int v = 0; v < V; ++v) {
            const vec wv = load(wr + v * VL);
            a0[v] += load(r + v * VL) * wv;
            a1[v] += load(r + sC + v * VL) * wv;
            a2[v] += load(r + s2 + v * VL) * wv;
            a3[v] += load(r + s3 + v * VL) * wv;
          }
          wr += C;
          opaque(wr);
          r += C;
          opaque(r);
        }
        row += rowC;
        opaque(row);
      }
      float* o = out + co;
      for (int v = 0; v < V; ++v) {
        store(o + q * oC + v * VL, act_vec(a0[v], act));
        store(o + (q + 1) * oC + v * VL, act_vec(a1[v], act));
        store(o + (q + 2) * oC + v * VL, act_vec(a2[v], act));
        store(o + (q + 3) * oC + v * VL, act_vec(a3[v], act));
      }
    }
  }
  for (; q < count; ++q)
    for (int64_t cb = 0; cb < nblk; ++cb) {
      const int64_t co = cb * V * VL;
      vec a[V];
      for (int v = 0; v < V; ++v) a[v] = db ? load(db + co + v * VL) : splat(0.f);
      const float* p = in + q * sC + co;
      for (int i = 0; i < nrows; ++i)
        for (int j = 0; j < KW; ++j)
          for (int v = 0; v < V; ++v) a[v] += load(p + i * rowC + j * C + v * VL) * load(w + co + (i * KW + j) * C + v * VL);
      for (int v = 0; v < V; ++v) store(out + co + q * oC + v * VL, act_vec(a[v], act));
    }
}

// One output pixel for V 8-channel blocks from c0, near the image border (or for a kernel size
// without a fixed-size path): only the taps inside the image, their range computed once.
template <int V>
static inline void dw_edge(const float* xb, const float* dw, const float* db, int64_t act, const Geometry& g, int64_t oh,
                           int64_t ow, int64_t c0, float* out) {
  const int64_t ih0 = oh * g.sh - g.pt, iw0 = ow * g.sw - g.pl;
  const int64_t i0 = std::max<int64_t>(0, -ih0), i1 = std::min(g.kh, g.H - ih0);
  const int64_t j0 = std::max<int64_t>(0, -iw0), j1 = std::min(g.kw, g.W - iw0);
  vec a[V];
  for (int v = 0; v < V; ++v) a[v] = db ? load(db + c0 + v * VL) : splat(0.f);
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = j0; j < j1; ++j) {
      const float* x = xb + ((ih0 + i) * g.W + iw0 + j) * g.C + c0;
      const float* w = dw + (i * g.kw + j) * g.C + c0;
      for (int v = 0; v < V; ++v) a[v] += load(x + v * VL) * load(w + v * VL);
    }
  for (int v = 0; v < V; ++v) store(out + v * VL, act_vec(a[v], act));
}

// nblk blocks of V 8-channel vectors [c0, c0 + 8 V nblk) of the depthwise conv over the output
// pixels [p0, p1) of one image, into t[(p - p0) * tC + c]: border pixels by dw_edge, each row's interior run by
// dw_interior. KH = KW = 0: any kernel size, all pixels by dw_edge.
template <int KH, int KW, int V>
static void dw_block(const float* xb, const float* dw, const float* db, int64_t act, const Geometry& g,
                     int64_t p0, int64_t p1, int64_t c0, float* t, int64_t nblk) {
  const int64_t C = g.C, tC = g.tC, W = g.W;
  const int64_t ow_lo = std::min(g.Wo, (g.pl + g.sw - 1) / g.sw);
  // floor: with W + pl < kw (only right padding completes a pixel's taps) no column is interior
  const int64_t ow_hi = std::max(ow_lo, std::min(g.Wo, floor_div(W + g.pl - g.kw, g.sw) + 1));
  int64_t p = p0;
  while (p < p1) {
    const int64_t oh = p / g.Wo, ow_begin = p % g.Wo, ow_end = std::min(g.Wo, ow_begin + (p1 - p));
    const int64_t ih0 = oh * g.sh - g.pt;
    float* trow = t + (p - p0 - ow_begin) * tC + c0;
    // the tap rows [i0, i1) inside the image; the run [lo, hi) of columns with all their taps
    // inside it (a border row's run too, over its in-image tap rows) goes to dw_interior
    const int64_t i0 = std::max<int64_t>(0, -ih0), i1 = std::min<int64_t>(KH, g.H - ih0);
    int64_t lo = ow_begin, hi = ow_begin;
    if (KH > 0 && i1 > i0) {
      lo = std::min(std::max(ow_begin, ow_lo), ow_end);
      hi = std::max(lo, std::min(ow_end, ow_hi));
    }
    for (int64_t cb = 0; cb < nblk; ++cb) {
      const int64_t cc = c0 + cb * V * VL;
      for (int64_t ow = ow_begin; ow < lo; ++ow) dw_edge<V>(xb, dw, db, act, g, oh, ow, cc, trow + ow * tC + cb * V * VL);
      for (int64_t ow = hi; ow < ow_end; ++ow) dw_edge<V>(xb, dw, db, act, g, oh, ow, cc, trow + ow * tC + cb * V * VL);
    }
    if (KH > 0 && hi > lo)
      dw_interior<(KH > 0 ? KH : 1), (KW > 0 ? KW : 1), V>(xb + ((ih0 + i0) * W + lo * g.sw - g.pl) * C + c0, W * C, C, g.sw * C,
                                                              dw + i0 * g.kw * C + c0, db ? db + c0 : nullptr, act, trow + lo * tC,
                                                              tC, hi - lo, nblk, i1 - i0);
    p += ow_end - ow_begin;
  }
}

// The channels [c0, C) left over by the 8-channel vectors (fewer than 8: all of them when C < 8),
// pixel by pixel with one accumulator per channel (NC = C - c0 independent FMA chains, in
// registers), over in-image taps.
template <int NC>
static void dw_scalar(const float* xb, const float* dw, const float* db, int64_t act, const Geometry& g,
                      int64_t p0, int64_t p1, int64_t c0, float* t) {
  constexpr int64_t nc = NC;
  float a[NC];
  int64_t oh = p0 / g.Wo, ow = p0 % g.Wo;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t ih0 = oh * g.sh - g.pt, iw0 = ow * g.sw - g.pl;
    const int64_t i0 = std::max<int64_t>(0, -ih0), i1 = std::min(g.kh, g.H - ih0);
    const int64_t j0 = std::max<int64_t>(0, -iw0), j1 = std::min(g.kw, g.W - iw0);
    for (int64_t c = 0; c < nc; ++c) a[c] = db ? db[c0 + c] : 0.f;
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = j0; j < j1; ++j) {
        const float* x = xb + ((ih0 + i) * g.W + iw0 + j) * g.C + c0;
        const float* w = dw + (i * g.kw + j) * g.C + c0;
        for (int64_t c = 0; c < nc; ++c) a[c] += x[c] * w[c];
      }
    float* o = t + (p - p0) * g.tC + c0;
    for (int64_t c = 0; c < nc; ++c) o[c] = act_scalar(a[c], act);
    if (++ow == g.Wo) { ow = 0; ++oh; }
  }
}

__attribute__((noinline)) static void depthwise(const float* xb, const float* dw, const float* db, int64_t act, const Geometry& g,
                      int64_t p0, int64_t p1, float* t) {
  const int64_t cv = g.C / VL * VL, n2 = cv / (2 * VL);
  if (n2 > 0) {
    if (g.kh == 3 && g.kw == 3) dw_block<3, 3, 2>(xb, dw, db, act, g, p0, p1, 0, t, n2);
    else if (g.kh == 5 && g.kw == 5) dw_block<5, 5, 2>(xb, dw, db, act, g, p0, p1, 0, t, n2);
    else dw_block<0, 0, 2>(xb, dw, db, act, g, p0, p1, 0, t, n2);
  }
  const int64_t c0 = n2 * 2 * VL;
  if (c0 < cv) {
    if (g.kh == 3 && g.kw == 3) dw_block<3, 3, 1>(xb, dw, db, act, g, p0, p1, c0, t, 1);
    else if (g.kh == 5 && g.kw == 5) dw_block<5, 5, 1>(xb, dw, db, act, g, p0, p1, c0, t, 1);
    else dw_block<0, 0, 1>(xb, dw, db, act, g, p0, p1, c0, t, 1);
  }
  switch (g.C - cv) {
    case 1: dw_scalar<1>(xb, dw, db, act, g, p0, p1, cv, t); break;
    case 2: dw_scalar<2>(xb, dw, db, act, g, p0, p1, cv, t); break;
    case 3: dw_scalar<3>(xb, dw, db, act, g, p0, p1, cv, t); break;
    case 4: dw_scalar<4>(xb, dw, db, act, g, p0, p1, cv, t); break;
    case 5: dw_scalar<5>(xb, dw, db, act, g, p0, p1, cv, t); break;
    case 6: dw_scalar<6>(xb, dw, db, act, g, p0, p1, cv, t); break;
    case 7: dw_scalar<7>(xb, dw, db, act, g, p0, p1, cv, t); break;
    default: break;
  }
}

// Checks every argument of fused_dwpw (the op is public, torch.ops.sepconv.fused_dwpw, not only
// called by FusedSeparableConv2d); returns the geometry.
static Geometry checked_geometry(const torch::Tensor& x, const torch::Tensor& dw, const torch::Tensor& dw_bias, int64_t act_mid,
                                 const torch::Tensor& pw, const torch::Tensor& pw_bias, int64_t n_out, int64_t act_out, int64_t kh,
                                 int64_t kw, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t tile_bytes) {
  constexpr const char* fn = "fused_dwpw";
  check_float(x, fn, "x", 4);
  check_float(dw, fn, "dw", 3);
  check_float(dw_bias, fn, "dw_bias", 1);
  check_float(pw, fn, "pw", 3);
  check_float(pw_bias, fn, "pw_bias", 1);
  check_act(act_mid, fn, "act_mid");
  check_act(act_out, fn, "act_out");
  check_ints(fn, {{"n_out", n_out, 1}, {"kh", kh, 1}, {"kw", kw, 1}, {"sh", sh, 1}, {"sw", sw, 1}, {"pt", pt, 0}, {"pb", pb, 0},
                  {"pl", pl, 0}, {"pr", pr, 0}, {"tile_bytes", tile_bytes, 1}});
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), N = n_out;
  TORCH_CHECK(C >= 1, fn, ": x: expected at least one channel, got shape ", x.sizes());
  check_ints(fn, {{"x's height", H, 0}, {"x's width", W, 0}});
  // depthwise weights (M, kh x kw, C) for a depth multiplier M: the intermediate channel m x C + c
  // (the tile's order; the pointwise weights are packed to match) filters input channel c
  TORCH_CHECK(dw.size(0) >= 1 && dw.size(1) == kh * kw && dw.size(2) == C, fn, ": dw: expected (M >= 1, kh*kw = ", kh * kw, ", C = ",
              C, "), got ", dw.sizes());
  const int64_t K = dw.size(0) * C;
  TORCH_CHECK(dw_bias.numel() == 0 || dw_bias.size(0) == K, fn, ": dw_bias: expected 0 or M*C = ", K, " elements, got ",
              dw_bias.numel());
  TORCH_CHECK(pw.size(0) == (N + NB - 1) / NB && pw.size(1) == K && pw.size(2) == NB, fn,
              ": pw: expected packed (ceil(n_out/16) = ", (N + NB - 1) / NB, ", M*C = ", K, ", 16), got ", pw.sizes());
  TORCH_CHECK(pw_bias.numel() == 0 || pw_bias.size(0) == pw.size(0) * NB, fn, ": pw_bias: expected 0 or ceil(n_out/16)*16 = ",
              pw.size(0) * NB, " elements, got ", pw_bias.numel());
  const int64_t Ho = conv_out_size(fn, "height", H, pt, pb, kh, sh, 1), Wo = conv_out_size(fn, "width", W, pl, pr, kw, sw, 1);
  return Geometry{H, W, C, K, Ho, Wo, kh, kw, sh, sw, pt, pl};
}

torch::Tensor fused_dwpw(torch::Tensor x, torch::Tensor dw, torch::Tensor dw_bias, int64_t act_mid, torch::Tensor pw,
                         torch::Tensor pw_bias, int64_t n_out, int64_t act_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                         int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t tile_bytes) {
  const Geometry g = checked_geometry(x, dw, dw_bias, act_mid, pw, pw_bias, n_out, act_out, kh, kw, sh, sw, pt, pb, pl, pr, tile_bytes);
  const int64_t B = x.size(0), C = g.C, H = g.H, W = g.W, N = n_out, M = dw.size(0), K = g.tC, Ho = g.Ho, Wo = g.Wo;
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  // contiguous copies held for the whole call (a pointer into a temporary copy would dangle)
  dw = dw.contiguous();
  dw_bias = dw_bias.contiguous();
  pw = pw.contiguous();
  pw_bias = pw_bias.contiguous();
  auto out = new_output({B, N, Ho, Wo}, at::MemoryFormat::ChannelsLast);
  const float* xp = x.data_ptr<float>();
  const float* dwp = dw.data_ptr<float>();
  const float* dbp = dw_bias.numel() ? dw_bias.data_ptr<float>() : nullptr;
  const float* pwp = pw.data_ptr<float>();
  const float* pbp = pw_bias.numel() ? pw_bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // tiles: ranges of output pixels of one image whose depthwise result (px x K floats) fits
  // tile_bytes, with a total (B x tiles) that spreads evenly over the threads
  const int64_t P = Ho * Wo, threads = std::max(1, at::get_num_threads());
  const int64_t cap = std::max<int64_t>(MR, tile_bytes / (K * 4) / MR * MR);
  int64_t tiles = (P + cap - 1) / cap;
  if ((B * tiles) % threads != 0) tiles = ((B * tiles + threads - 1) / threads * threads + B - 1) / B;
  tiles = std::min(tiles, (P + MR - 1) / MR);
  const int64_t px = ((P + tiles - 1) / tiles + MR - 1) / MR * MR;
  tiles = (P + px - 1) / px;
  // a large output of a shallow GEMM (where writing it is a large part of the time) goes around
  // the cache; for deep ones (K > 384) streaming stores measured no faster
  const bool stream = streams(K, B * P * N * 4);
  const int64_t jobs = B * tiles;
  parallel_claim(jobs, [&](const auto& claim) {
    // part: the GEMM's partial sums when it splits the channel sum. Uninitialized (every element
    // is written before it is read): zero-filling them cost ~10% of a small layer's depthwise time
    std::unique_ptr<float[]> buf(new float[px * K]), part(new float[K > SPLIT_MIN_C ? px * NB : 0]);
    for (int64_t job = claim(), next; job < jobs; job = next) {
      const int64_t b = job / tiles, p0 = (job % tiles) * px, p1 = std::min(P, p0 + px);
      for (int64_t m = 0; m < M; ++m)  // each multiplier's filters over the same input rows
        depthwise(xp + b * H * W * C, dwp + m * kh * kw * C, dbp ? dbp + m * C : nullptr, act_mid, g, p0, p1, buf.get() + m * C);
      next = claim();  // claimed now, so that its input rows can be fetched during this GEMM
      const char *pf = nullptr, *pf_end = nullptr;
      if (next < jobs) {
        const int64_t next_b = next / tiles, q0 = (next % tiles) * px, q1 = std::min(P, q0 + px);
        const int64_t r0 = std::max<int64_t>(0, (q0 / Wo) * sh - pt);
        const int64_t r1 = std::min<int64_t>(H, ((q1 - 1) / Wo) * sh - pt + kh);
        pf = reinterpret_cast<const char*>(xp + (next_b * H + r0) * W * C);
        pf_end = reinterpret_cast<const char*>(xp + (next_b * H + r1) * W * C);
      }
      gemm(buf.get(), p1 - p0, K, pwp, N, 0, (N + NB - 1) / NB, pbp, act_out, stream, op + (b * P + p0) * N, pf, pf_end, part.get());
    }
#ifdef __AVX__
    if (stream) _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
  });
  return out;
}

// How many threads an at::parallel_for in this file actually runs on (a regression check: built
// without -fopenmp under torch's OpenMP backend, the answer is silently 1).
static int64_t parallel_threads() {
  const int64_t n = 64 * std::max(1, at::get_num_threads());
  std::vector<int> seen(n, -1);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) seen[i] = at::get_thread_num();
  });
  std::sort(seen.begin(), seen.end());
  return std::unique(seen.begin(), seen.end()) - seen.begin();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_dwpw", &fused_dwpw, "fused depthwise + pointwise convolution (inference, float32, NHWC)");
  m.def("release_buffers", &release_buffers, "free the pooled output buffers");
  m.def("parallel_threads", &parallel_threads, "threads an at::parallel_for in the extension runs on");
}

// Also a dispatcher op, torch.ops.sepconv.fused_dwpw, so that traced / frozen TorchScript graphs
// (and the profiler) see the call instead of baking its result in as a constant.
TORCH_LIBRARY(sepconv, m) {
  m.def("fused_dwpw(Tensor x, Tensor dw, Tensor dw_bias, int act_mid, Tensor pw, Tensor pw_bias, int n_out, int act_out, "
        "int kh, int kw, int sh, int sw, int pt, int pb, int pl, int pr, int tile_bytes) -> Tensor");
}
TORCH_LIBRARY_IMPL(sepconv, CPU, m) { m.impl("fused_dwpw", &fused_dwpw); }
