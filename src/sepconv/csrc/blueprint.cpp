// Fused blueprint separable convolution for inference on CPU (float32, NHWC / channels_last):
// pointwise C -> R N (+ bias, activation), then per output channel n a k x k conv summing its R
// intermediate channels (PyTorch: a grouped conv with groups = N, R inputs per group), + bias,
// activation.
//
// PyTorch runs that grouped conv with few channels per group an order of magnitude slower than a
// depthwise one on this kind of CPU (a 64 x 4 -> 64 grouped 3x3 at batch 64: 13 ms against 3 ms
// for the pointwise before it), which made converted models slower than the originals. Here each
// job is one band of output rows of one image: the pointwise GEMM (the fused kernel's, prepacked
// weights) computes the band's input rows of the intermediate into a thread-local buffer sized
// for L2, and the depthwise pass (the fused kernel's, with its sum over R inputs per output:
// Geometry::R) reads them from there and writes the output. The intermediate never goes to
// memory. Bands of one image overlap by kh - sh input rows, whose pointwise part is computed
// twice; bands are as tall as the buffer allows (a whole image when it fits).
//
// The intermediate is kept in the order g N + n (the pointwise weights' rows permuted to match
// by the caller), so the depthwise pass's vectors cover adjacent output channels and read R
// contiguous runs of them. Zero padding applies to the intermediate (as in PyTorch, after the
// activation): padding taps are skipped.
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>

#include "common.h"
#include "gemm.h"

using namespace sepconv;

namespace {

struct Plan {
  int64_t rows;   // output rows per band
  int64_t bands;  // bands per image
};

// Output rows per band: the band's intermediate (input rows x W x R N floats) within tile_bytes,
// and enough jobs (batch x bands) for every thread, spread evenly.
Plan plan_bands(int64_t B, int64_t Ho, int64_t W, int64_t RN, int64_t kh, int64_t sh, int64_t tile_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, W * RN * 4);
  const int64_t in_rows = std::max<int64_t>(kh, tile_bytes / row_bytes);
  int64_t rows = std::max<int64_t>(1, std::min(Ho, (in_rows - kh) / sh + 1));
  int64_t bands = (Ho + rows - 1) / rows;
  const int64_t threads = std::max(1, at::get_num_threads());
  if (B * bands < threads) bands = std::min(Ho, (threads + B - 1) / B);
  else if ((B * bands) % threads != 0) bands = std::min(Ho, ((B * bands + threads - 1) / threads * threads + B - 1) / B);
  rows = (Ho + bands - 1) / bands;
  return Plan{rows, (Ho + rows - 1) / rows};
}

}  // namespace

// x: (B, C, H, W); pw: the pointwise weights packed as (ceil(R N / 16), C, 16) panels, its rows in the
// order g N + n; pw_bias: empty or ceil(R N / 16) * 16; dw: (kh x kw, R, N); dw_bias: empty or N.
torch::Tensor blueprint_pwdw(torch::Tensor x, torch::Tensor pw, torch::Tensor pw_bias, int64_t act_mid, torch::Tensor dw,
                             torch::Tensor dw_bias, int64_t act_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pt,
                             int64_t pb, int64_t pl, int64_t pr, int64_t tile_bytes) {
  constexpr const char* fn = "blueprint_pwdw";
  check_float(x, fn, "x", 4);
  check_float(pw, fn, "pw", 3);
  check_float(pw_bias, fn, "pw_bias", 1);
  check_float(dw, fn, "dw", 3);
  check_float(dw_bias, fn, "dw_bias", 1);
  check_act(act_mid, fn, "act_mid");
  check_act(act_out, fn, "act_out");
  check_ints(fn, {{"kh", kh, 1}, {"kw", kw, 1}, {"sh", sh, 1}, {"sw", sw, 1}, {"pt", pt, 0}, {"pb", pb, 0}, {"pl", pl, 0},
                  {"pr", pr, 0}, {"tile_bytes", tile_bytes, 1}});
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C >= 1, fn, ": x: expected at least one channel, got shape ", x.sizes());
  check_ints(fn, {{"x's height", H, 0}, {"x's width", W, 0}});
  TORCH_CHECK(dw.size(0) == kh * kw && dw.size(1) >= 1 && dw.size(2) >= 1, fn, ": dw: expected (kh*kw = ", kh * kw,
              ", R >= 1, N >= 1), got ", dw.sizes());
  const int64_t R = dw.size(1), N = dw.size(2), RN = R * N, blocks = (RN + NB - 1) / NB;
  TORCH_CHECK(dw_bias.numel() == 0 || dw_bias.size(0) == N, fn, ": dw_bias: expected 0 or N = ", N, " elements, got ",
              dw_bias.numel());
  TORCH_CHECK(pw.size(0) == blocks && pw.size(1) == C && pw.size(2) == NB, fn, ": pw: expected packed (ceil(R*N/16) = ", blocks,
              ", C = ", C, ", 16), got ", pw.sizes());
  TORCH_CHECK(pw_bias.numel() == 0 || pw_bias.size(0) == blocks * NB, fn, ": pw_bias: expected 0 or ceil(R*N/16)*16 = ",
              blocks * NB, " elements, got ", pw_bias.numel());
  const int64_t Ho = conv_out_size(fn, "height", H, pt, pb, kh, sh, 1), Wo = conv_out_size(fn, "width", W, pl, pr, kw, sw, 1);
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  pw = pw.contiguous();
  pw_bias = pw_bias.contiguous();
  dw = dw.contiguous();
  dw_bias = dw_bias.contiguous();
  auto out = new_output({B, N, Ho, Wo}, at::MemoryFormat::ChannelsLast);
  const int64_t P = Ho * Wo;
  if (B == 0 || P == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* pwp = pw.data_ptr<float>();
  const float* pbp = pw_bias.numel() ? pw_bias.data_ptr<float>() : nullptr;
  const float* dwp = dw.data_ptr<float>();
  const float* dbp = dw_bias.numel() ? dw_bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const Kernels& isa = kernels();
  const int64_t kc = split_kc(isa, C);
  const Plan plan = plan_bands(B, Ho, W, RN, kh, sh, tile_bytes);
  const int64_t max_in = std::min(H, (plan.rows - 1) * sh + kh);  // input rows of a band, at most
  const int64_t jobs = B * plan.bands;
  parallel_claim(jobs, [&](const auto& claim) {
    // uninitialized: the GEMM writes every element it later reads
    std::unique_ptr<float[]> buf(new float[std::max<int64_t>(1, max_in * W * RN)]);
    std::unique_ptr<float[]> part(new float[kc < C ? std::max<int64_t>(1, max_in * W) * isa.cols : 0]);
    for (int64_t job = claim(); job < jobs; job = claim()) {
      const int64_t b = job / plan.bands, oh0 = (job % plan.bands) * plan.rows, oh1 = std::min(Ho, oh0 + plan.rows);
      // the band's input rows [r0, r1) inside the image (none: every tap is padding)
      const int64_t r0 = std::min(H, std::max<int64_t>(0, oh0 * sh - pt));
      const int64_t r1 = std::max(r0, std::min<int64_t>(H, (oh1 - 1) * sh - pt + kh));
      if (r1 > r0)
        isa.gemm(xp + (b * H + r0) * W * C, C, (r1 - r0) * W, C, pwp, RN, 0, blocks, pbp, act_mid, false, buf.get(), nullptr,
                 nullptr, part.get(), kc);
      // the buffer as an image of r1 - r0 rows whose first row is the image's row r0
      const Geometry g{r1 - r0, W, N, N, Ho, Wo, kh, kw, sh, sw, pt + r0, pl, RN, R};
      isa.depthwise(buf.get(), dwp, dbp, act_out, g, oh0 * Wo, oh1 * Wo, op + (b * P + oh0 * Wo) * N);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(sepconv, m) {
  m.def("blueprint_pwdw(Tensor x, Tensor pw, Tensor pw_bias, int act_mid, Tensor dw, Tensor dw_bias, int act_out, int kh, "
        "int kw, int sh, int sw, int pt, int pb, int pl, int pr, int tile_bytes) -> Tensor");
}
TORCH_LIBRARY_IMPL(sepconv, CPU, m) { m.impl("blueprint_pwdw", &blueprint_pwdw); }
