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
// Depthwise: steps of 4 output pixels x 16 or 32 channels (whole 64-byte lines), so each weight load
// serves four pixels and eight FMA chains run independently; a step runs over all channel blocks
// before the next pixels, so the input is read as contiguous runs of whole pixels (a loop over
// channel blocks outside the pixels, touching one line in four of a 64-channel image per pass,
// measured 10-45% slower at batch 8, where the input comes from DRAM). In the first and last
// rows the same steps sum over the in-image tap rows only (a per-pixel path for them was 2.6x
// slower per pixel: 27% of a 14x14 image); the first and last columns sum their in-image taps
// pixel by pixel. GEMM: MR pixels x 16 (AVX2) or 64 (AVX-512) output channels of accumulators
// against weights prepacked as (ceil(N / 16), C, 16) panels, reading the tile in place; a large
// output of a shallow GEMM is written with streaming stores (it would only evict the next tile's
// data from cache otherwise).
//
// A depth multiplier M runs the depthwise pass M times over the same input rows, each with its
// own filters, into channels [m C, (m + 1) C) of the tile (PyTorch orders them c M + m; the
// pointwise weights are packed in the tile's order), so vectors always cover adjacent input
// channels. The GEMM then sums over M x C channels.
//
// The depthwise pass and the GEMM are the active instruction set's kernels (kernels.h, isa_impl.h:
// AVX-512, AVX2 + FMA or the baseline, chosen at run time), this file the checks, tiles and threads;
// the register blocks (MR rows x 16 or 64 columns) and the GEMM's channel blocks come from the
// vector width and the L2 size. Threads: at::parallel_for, i.e. torch's own pool and thread count (with
// the OpenMP backend this file must be compiled with -fopenmp, or the loop runs on one thread).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "common.h"
#include "gemm.h"

using namespace sepconv;

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
  return Geometry{H, W, C, K, Ho, Wo, kh, kw, sh, sw, pt, pl, C, 1};
}

torch::Tensor fused_dwpw(torch::Tensor x, torch::Tensor dw, torch::Tensor dw_bias, int64_t act_mid, torch::Tensor pw,
                         torch::Tensor pw_bias, int64_t n_out, int64_t act_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                         int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t tile_bytes) {
  Geometry g = checked_geometry(x, dw, dw_bias, act_mid, pw, pw_bias, n_out, act_out, kh, kw, sh, sw, pt, pb, pl, pr, tile_bytes);
  const int64_t B = x.size(0), C = g.C, H = g.H, W = g.W, N = n_out, M = dw.size(0), K = g.tC, Ho = g.Ho, Wo = g.Wo;
  // the tile's rows at a stride of K rounded up to 16 floats (whole cache lines), plus 16 where
  // that stride is a multiple of 1 KiB: then the GEMM's MR rows would fall in at most 4 L1 sets
  // (at K = 1024 all in one: 14 rows in a 12-way set), 64 bytes further apart they spread over MR
  // sets. Padding every stride cost up to ~10% on shallow layers (K = 32: rows 1.5x as long)
  g.tC = (K + NB - 1) / NB * NB;
  if (g.tC % 256 == 0) g.tC += NB;
  const int64_t ldt = g.tC;
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
  const Kernels& isa = kernels();
  const int64_t MR = isa.mr, kc = split_kc(isa, K), blocks = (N + NB - 1) / NB, step = isa.cols / NB;
  // tiles: ranges of output pixels of one image whose depthwise result (px x K floats) fits
  // tile_bytes, with a total (B x tiles) that spreads evenly over the threads
  const int64_t P = Ho * Wo, threads = std::max(1, at::get_num_threads());
  const int64_t cap = std::max<int64_t>(MR, tile_bytes / (ldt * 4) / MR * MR);
  int64_t tiles = (P + cap - 1) / cap;
  // groups of the pointwise weights' panels, each its own job. When the weights outgrow half of L2
  // (so every tile streams them from L3) and there are fewer images than threads (a deep layer at
  // batch 1), each thread takes a share of the output channels for whole images, in tiles of up to
  // L2's size: it computes the tile's (cheap) depthwise part itself and streams only its share of
  // the weights, once per tile. Small pixel tiles made every thread stream all the weights several
  // times (512 @14, batch 1: 3 times each): the deep layers of MobileNetV1 at batch 1 (in the
  // network, Zen 3, 2 threads) took 6.2 ms that way and 5.6 with this split. At batch 8 this split
  // measured slower (49.7 ms against 47.6: each image's depthwise part computed by every thread)
  int64_t groups = 1;
  if (threads > 1 && K * N * 4 > l2_bytes() / 2 && B < threads) {
    groups = std::min(threads, (blocks + step - 1) / step);
    const int64_t whole = std::max<int64_t>(MR, l2_bytes() / (ldt * 4) / MR * MR);
    tiles = (P + whole - 1) / whole;
  } else if ((B * tiles) % threads != 0) {
    tiles = ((B * tiles + threads - 1) / threads * threads + B - 1) / B;
  }
  tiles = std::min(tiles, (P + MR - 1) / MR);
  // tiles of near-equal size (the GEMM's row steps split any count evenly): rounded up to whole
  // register blocks, 196 pixels in 6 tiles were five of 36 and one of 16, and the thread with the
  // short one waited for the other (512 @14, batch 1, Zen 1: 1.53 ms against 1.41 for tiles of 33)
  const int64_t px = (P + tiles - 1) / tiles;
  tiles = (P + px - 1) / px;
  // group q: the panels [panel(q), panel(q + 1)), in whole register blocks
  const auto panel = [&](int64_t q) { return std::min(blocks, (q * blocks / groups + step - 1) / step * step); };
  // a large output of a shallow GEMM (where writing it is a large part of the time) goes around
  // the cache; for deep ones (K > 384) streaming stores measured no faster
  const bool stream = streams(K, B * P * N * 4);
  const int64_t jobs = B * tiles * groups;
  parallel_claim(jobs, [&](const auto& claim) {
    // part: the GEMM's partial sums when it splits the channel sum. Uninitialized (every element
    // is written before it is read): zero-filling them cost ~10% of a small layer's depthwise time
    std::unique_ptr<float[]> buf(new float[px * ldt]), part(new float[kc < K ? px * isa.cols : 0]);
    for (int64_t job = claim(), next; job < jobs; job = next) {
      const int64_t q = job % groups, tile = job / groups, b = tile / tiles, p0 = (tile % tiles) * px, p1 = std::min(P, p0 + px);
      for (int64_t m = 0; m < M; ++m)  // each multiplier's filters over the same input rows
        isa.depthwise(xp + b * H * W * C, dwp + m * kh * kw * C, dbp ? dbp + m * C : nullptr, act_mid, g, p0, p1,
                      buf.get() + m * C);
      next = claim();  // claimed now, so that its input rows can be fetched during this GEMM
      const char *pf = nullptr, *pf_end = nullptr;
      if (next < jobs) {
        const int64_t next_tile = next / groups, next_b = next_tile / tiles, q0 = (next_tile % tiles) * px;
        const int64_t q1 = std::min(P, q0 + px);
        const int64_t r0 = std::max<int64_t>(0, (q0 / Wo) * sh - pt);
        const int64_t r1 = std::min<int64_t>(H, ((q1 - 1) / Wo) * sh - pt + kh);
        pf = reinterpret_cast<const char*>(xp + (next_b * H + r0) * W * C);
        pf_end = reinterpret_cast<const char*>(xp + (next_b * H + r1) * W * C);
      }
      if (panel(q) < panel(q + 1))
        isa.gemm(buf.get(), ldt, p1 - p0, K, pwp, N, panel(q), panel(q + 1), pbp, act_out, stream, op + (b * P + p0) * N, pf,
                 pf_end, part.get(), kc);
    }
    if (stream) isa.fence();  // streaming stores are weakly ordered: publish them before returning
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
  m.def("isa", [] { return std::string(kernels().name); }, "the active instruction set's kernels");
  m.def("set_isa", &set_isa, "make an instruction set's kernels active ('' = the widest supported)");
  m.def("supported_isas", &supported_isas, "the instruction sets this CPU supports, widest first");
  m.def("blocking", [] {
    const Kernels& k = kernels();
    return std::make_tuple(k.vl, k.mr, k.cols, split_kc(k, int64_t(1) << 30));
  }, "(floats per vector, GEMM rows x columns per register block, GEMM channel block)");
  m.def("cache_sizes", [] { return std::make_pair(l1_bytes(), l2_bytes()); }, "(L1 data, L2) bytes per core");
}

// Also a dispatcher op, torch.ops.sepconv.fused_dwpw, so that traced / frozen TorchScript graphs
// (and the profiler) see the call instead of baking its result in as a constant.
TORCH_LIBRARY(sepconv, m) {
  m.def("fused_dwpw(Tensor x, Tensor dw, Tensor dw_bias, int act_mid, Tensor pw, Tensor pw_bias, int n_out, int act_out, "
        "int kh, int kw, int sh, int sw, int pt, int pb, int pl, int pr, int tile_bytes) -> Tensor");
}
TORCH_LIBRARY_IMPL(sepconv, CPU, m) { m.impl("fused_dwpw", &fused_dwpw); }
