// Dense layers on the fused kernel's GEMM (float32, inference): a 2-D convolution with few input
// values per output (Cin x kh x kw, e.g. a network's RGB stem) and a linear layer.
//
// Convolution: an implicit GEMM per output row against the weights, prepacked as
// (ceil(N / 16), K, 16) panels in (kh, kw, Cin) order, with bias and ReLU/ReLU6 fused into the
// GEMM's stores. Where all of a pixel's taps are inside the image, a tap row is kw x Cin
// contiguous floats of the NHWC input, which the GEMM reads in place (no copy: gathering the
// patches, 27 short copies per pixel for a 3x3 RGB stem, cost more than the multiply-adds); the
// pixels near the border have their patches gathered into a small buffer (im2col, zeros for
// padding taps) first. NHWC in and out. oneDNN runs such a conv (3 input channels) as a direct
// convolution at about half the FMA peak here and the ReLU as a second pass over the output.
//
// Linear: the rows of the input are the GEMM's rows in place; with the weights prepacked, nothing
// is repacked per call (the BLAS path copies the whole weight matrix into its own panels on
// every call: ~0.5 ms of MobileNetV1's classifier at batch 8). Few rows (a classifier at small
// batch): the weight panels are split over the threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "common.h"
#include "gemm.h"

using namespace sepconv;

namespace {

constexpr int64_t MAX_TILE_ROWS = 96;

// w: prepacked (ceil(N / 16), K, 16) panels; bias: empty or padded to ceil(N / 16) * 16
void check_packed(const torch::Tensor& w, const torch::Tensor& bias, int64_t K, int64_t N, const char* fn) {
  check_float(w, fn, "w", 3);
  check_float(bias, fn, "bias", 1);
  TORCH_CHECK(w.size(0) == (N + NB - 1) / NB && w.size(1) == K && w.size(2) == NB, fn, ": w: expected packed (ceil(n_out/16) = ",
              (N + NB - 1) / NB, ", K = ", K, ", 16), got ", w.sizes());
  TORCH_CHECK(bias.numel() == 0 || bias.size(0) == w.size(0) * NB, fn, ": bias: expected 0 or ceil(n_out/16)*16 = ",
              w.size(0) * NB, " elements, got ", bias.numel());
}

}  // namespace

// Checks every argument of conv2d_gemm (the op is public, torch.ops.sepconv.conv2d_gemm); returns
// the output's (height, width).
static std::pair<int64_t, int64_t> checked_output_size(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias,
                                                       int64_t n_out, int64_t act, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                                       int64_t dh, int64_t dw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  constexpr const char* fn = "conv2d_gemm";
  check_float(x, fn, "x", 4);
  check_act(act, fn, "act");
  check_ints(fn, {{"n_out", n_out, 1}, {"kh", kh, 1}, {"kw", kw, 1}, {"sh", sh, 1}, {"sw", sw, 1}, {"dh", dh, 1}, {"dw", dw, 1},
                  {"pt", pt, 0}, {"pb", pb, 0}, {"pl", pl, 0}, {"pr", pr, 0}});
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C >= 1, fn, ": x: expected at least one channel, got shape ", x.sizes());
  TORCH_CHECK(kh * kw <= MAX_GEOMETRY / C, fn, ": kh*kw*C: expected at most ", MAX_GEOMETRY, ", got ", kh, "*", kw, "*", C);
  check_ints(fn, {{"x's height", H, 0}, {"x's width", W, 0}});
  check_packed(w, bias, kh * kw * C, n_out, fn);
  return {conv_out_size(fn, "height", H, pt, pb, kh, sh, dh), conv_out_size(fn, "width", W, pl, pr, kw, sw, dw)};
}

torch::Tensor conv2d_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor bias, int64_t n_out, int64_t act, int64_t kh, int64_t kw,
                          int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  const auto size = checked_output_size(x, w, bias, n_out, act, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = n_out, K = kh * kw * C;
  const int64_t Ho = size.first, Wo = size.second;
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  // contiguous copies held for the whole call (a pointer into a temporary copy would dangle)
  w = w.contiguous();
  bias = bias.contiguous();
  auto out = new_output({B, N, Ho, Wo}, at::MemoryFormat::ChannelsLast);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const Kernels& isa = kernels();
  const int64_t blocks = (N + NB - 1) / NB, P = Ho * Wo, kc = split_kc(isa, K);
  const bool stream = streams(K, B * P * N * 4);
  // output columns whose taps are all inside the image (dw == 1: a tap row is kw x C contiguous floats)
  const int64_t ow_lo = dw == 1 ? std::min(Wo, (pl + sw - 1) / sw) : 0;
  // (floor: with W + pl < kw, where only right padding completes a pixel's taps, none is inside)
  const int64_t ow_hi = dw == 1 ? std::max(ow_lo, std::min(Wo, floor_div(W + pl - kw, sw) + 1)) : 0;
  // jobs: output rows, claimed one at a time by the threads
  parallel_claim(B * Ho, [&](const auto& claim) {
    std::vector<float> col(Wo * K), part(kc < K ? Wo * isa.cols : 0);
    for (int64_t job = claim(); job < B * Ho; job = claim()) {
      const int64_t b = job / Ho, oh = job % Ho, ih0 = oh * sh - pt;
      const float* xb = xp + b * H * W * C;
      float* orow = op + (b * P + oh * Wo) * N;
      const bool row_inside = ih0 >= 0 && ih0 + (kh - 1) * dh < H;
      const int64_t lo = row_inside ? ow_lo : 0, hi = row_inside ? ow_hi : 0;
      // columns [0, lo) and [hi, Wo): patches gathered (zeros for padding taps), then the GEMM
      const int64_t edges[2][2] = {{0, lo}, {hi, Wo}};
      for (const auto& e : edges) {
        if (e[1] <= e[0]) continue;
        float* dst = col.data();
        for (int64_t ow = e[0]; ow < e[1]; ++ow) {
          const int64_t iw0 = ow * sw - pl;
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t ih = ih0 + i * dh;
            for (int64_t j = 0; j < kw; ++j, dst += C) {
              const int64_t iw = iw0 + j * dw;
              if (ih >= 0 && ih < H && iw >= 0 && iw < W) std::memcpy(dst, xb + (ih * W + iw) * C, C * sizeof(float));
              else std::memset(dst, 0, C * sizeof(float));
            }
          }
        }
        isa.gemm(col.data(), K, e[1] - e[0], K, wp, N, 0, blocks, bp, act, stream, orow + e[0] * N, nullptr, nullptr, part.data(), kc);
      }
      // columns [lo, hi): the GEMM reads the patches in place, one tap row (kw x C floats) at a time,
      // pixels at stride sw x C
      if (hi > lo)
        isa.conv_row(xb + (ih0 * W + lo * sw - pl) * C, hi - lo, sw * C, kh, kw * C, dh * W * C, wp, K, N, bp, act, stream,
                     orow + lo * N);
    }
    if (stream) isa.fence();  // streaming stores are weakly ordered: publish them before returning
  });
  return out;
}

torch::Tensor linear_gemm(torch::Tensor x, torch::Tensor w, torch::Tensor bias, int64_t n_out, int64_t act) {
  constexpr const char* fn = "linear_gemm";
  check_float(x, fn, "x", 2);
  check_act(act, fn, "act");
  check_ints(fn, {{"n_out", n_out, 1}});
  const int64_t M = x.size(0), K = x.size(1), N = n_out;
  TORCH_CHECK(K >= 1, fn, ": x: expected at least one input feature, got shape ", x.sizes());
  check_packed(w, bias, K, N, fn);
  x = x.contiguous();
  // contiguous copies held for the whole call (a pointer into a temporary copy would dangle)
  w = w.contiguous();
  bias = bias.contiguous();
  auto out = new_output({M, N}, at::MemoryFormat::Contiguous);
  if (M == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // jobs: (row tile, group of weight panels); few row tiles -> the panels are split instead
  const Kernels& isa = kernels();
  const int64_t MR = isa.mr, kc = split_kc(isa, K), step = isa.cols / NB;  // panels per register block
  const int64_t blocks = (N + NB - 1) / NB, threads = std::max(1, at::get_num_threads());
  const int64_t rows = std::min(MAX_TILE_ROWS / MR * MR, (M + MR - 1) / MR * MR), tiles = (M + rows - 1) / rows;
  const int64_t groups = std::min(blocks, std::max<int64_t>(1, (2 * threads + tiles - 1) / tiles));
  parallel_claim(tiles * groups, [&](const auto& claim) {
    std::vector<float> part(kc < K ? rows * isa.cols : 0);
    // group g: the panels [g * blocks / groups, ...), rounded to whole register blocks
    const auto panel = [&](int64_t g) { return std::min(blocks, (g * blocks / groups + step - 1) / step * step); };
    for (int64_t job = claim(); job < tiles * groups; job = claim()) {
      const int64_t t = job / groups, g = job % groups, m0 = t * rows, m1 = std::min(M, m0 + rows);
      if (panel(g) < panel(g + 1))
        isa.gemm(xp + m0 * K, K, m1 - m0, K, wp, N, panel(g), panel(g + 1), bp, act, false, op + m0 * N, nullptr, nullptr,
                 part.data(), kc);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(sepconv, m) {
  m.def("conv2d_gemm(Tensor x, Tensor w, Tensor bias, int n_out, int act, int kh, int kw, int sh, int sw, int dh, int dw, "
        "int pt, int pb, int pl, int pr) -> Tensor");
  m.def("linear_gemm(Tensor x, Tensor w, Tensor bias, int n_out, int act) -> Tensor");
}
TORCH_LIBRARY_IMPL(sepconv, CPU, m) {
  m.impl("conv2d_gemm", &conv2d_gemm);
  m.impl("linear_gemm", &linear_gemm);
}
