// Separable 2-D filtering on CPU (float32): out = kx (along W) applied to ky (along H) applied to
// the image, i.e. cross-correlation with outer(ky, kx), with the image border handled here.
//
// The image is cut into strips of output rows. For each row, the vertical pass reads the kh
// source rows it needs (border rows mapped to mirrored / replicated / wrapped rows, or zeros) and
// writes one row buffer, padded at both ends by the same border rule; the horizontal pass reads
// that buffer at once, while it is in L1. Each pixel therefore makes one trip through memory (the
// PyTorch path makes one per tap, plus a padded copy of the image). Both passes vectorize along W,
// four vectors per step, the tap weight broadcast: the active instruction set's filter_rows and
// filter_shift (kernels.h, isa_impl.h; 64 outputs per step with AVX-512, 32 with AVX2). Work is split over
// (plane, strip) with at::parallel_for; outputs of 1 MiB and more come from the pooled allocator.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"

using namespace sepconv;

namespace {

constexpr int64_t STRIP_ROWS = 16;

// The source index of padded index i in [-pad, n + pad), or -1 for a zero.
// border: 0 zeros, 1 reflect (mirror without repeating the edge), 2 replicate, 3 circular.
inline int64_t source_index(int64_t i, int64_t n, int64_t border) {
  if (i >= 0 && i < n) return i;
  switch (border) {
    case 1: {
      if (n == 1) return 0;
      const int64_t period = 2 * (n - 1);
      int64_t m = ((i % period) + period) % period;
      return m < n ? m : period - m;
    }
    case 2: return i < 0 ? 0 : n - 1;
    case 3: return ((i % n) + n) % n;
    default: return -1;
  }
}

}  // namespace

// x: (B, C, H, W) float32; ky: (C, kh); kx: (C, kw); pads top, bottom, left, right.
// Returns (B, C, H + pt + pb - kh + 1, W + pl + pr - kw + 1).
torch::Tensor separable_filter2d(torch::Tensor x, torch::Tensor ky, torch::Tensor kx, int64_t pt, int64_t pb, int64_t pl,
                                 int64_t pr, int64_t border) {
  // every argument checked here: the op is public (torch.ops.sepconv.separable_filter2d)
  constexpr const char* fn = "separable_filter2d";
  check_float(x, fn, "x", 4);
  check_float(ky, fn, "ky", 2);
  check_float(kx, fn, "kx", 2);
  TORCH_CHECK(border >= 0 && border <= 3, fn, ": border: expected 0 (zeros), 1 (reflect), 2 (replicate) or 3 (circular), got ",
              border);
  check_ints(fn, {{"pt", pt, 0}, {"pb", pb, 0}, {"pl", pl, 0}, {"pr", pr, 0}});
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_ints(fn, {{"x's height", H, 1}, {"x's width", W, 1}});
  TORCH_CHECK(ky.size(0) == C && ky.size(1) >= 1, fn, ": ky: expected (C = ", C, ", kh >= 1), got ", ky.sizes());
  TORCH_CHECK(kx.size(0) == C && kx.size(1) >= 1, fn, ": kx: expected (C = ", C, ", kw >= 1), got ", kx.sizes());
  const int64_t kh = ky.size(1), kw = kx.size(1);
  // the border rules of F.pad (sepconv.functional.separable_filter2d checks the same before either
  // path): reflect pads smaller than the image, circular ones at most its size (one wrap)
  const int64_t max_h = border == 1 ? H - 1 : (border == 3 ? H : MAX_GEOMETRY);
  const int64_t max_w = border == 1 ? W - 1 : (border == 3 ? W : MAX_GEOMETRY);
  TORCH_CHECK(pt <= max_h && pb <= max_h && pl <= max_w && pr <= max_w, fn, ": pads (", pt, ", ", pb, ", ", pl, ", ", pr,
              "): expected at most ", max_h, " rows and ", max_w, " columns for border ", border, " on a ", H, "x", W, " image");
  const int64_t Ho = conv_out_size(fn, "height", H, pt, pb, kh, 1, 1), Wo = conv_out_size(fn, "width", W, pl, pr, kw, 1, 1);
  const int64_t Wp = W + pl + pr;
  x = x.contiguous();
  ky = ky.contiguous();
  kx = kx.contiguous();
  auto out = new_output({B, C, Ho, Wo}, at::MemoryFormat::Contiguous);
  const float* xp = x.data_ptr<float>();
  const float* kyp = ky.data_ptr<float>();
  const float* kxp = kx.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t strips = (Ho + STRIP_ROWS - 1) / STRIP_ROWS;
  const Kernels& isa = kernels();
  at::parallel_for(0, B * C * strips, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(Wp), zeros(W, 0.f);
    std::vector<const float*> rows(kh);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t plane = job / strips, r0 = (job % strips) * STRIP_ROWS, r1 = std::min(Ho, r0 + STRIP_ROWS);
      const int64_t c = plane % C;
      const float* src = xp + plane * H * W;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t i = 0; i < kh; ++i) {
          const int64_t s = source_index(r + i - pt, H, border);
          rows[i] = s < 0 ? zeros.data() : src + s * W;
        }
        float* mid = row.data() + pl;
        isa.filter_rows(rows.data(), kyp + c * kh, kh, mid, W);  // vertical
        for (int64_t j = -pl; j < 0; ++j) {
          const int64_t s = source_index(j, W, border);
          mid[j] = s < 0 ? 0.f : mid[s];
        }
        for (int64_t j = W; j < W + pr; ++j) {
          const int64_t s = source_index(j, W, border);
          mid[j] = s < 0 ? 0.f : mid[s];
        }
        isa.filter_shift(row.data(), kxp + c * kw, kw, op + (plane * Ho + r) * Wo, Wo);  // horizontal
      }
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(sepconv, m) {
  m.def("separable_filter2d(Tensor x, Tensor ky, Tensor kx, int pt, int pb, int pl, int pr, int border) -> Tensor");
}
TORCH_LIBRARY_IMPL(sepconv, CPU, m) { m.impl("separable_filter2d", &separable_filter2d); }
