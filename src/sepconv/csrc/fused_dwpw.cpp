// Fused depthwise + pointwise convolution for inference on CPU (float32, NHWC / channels_last).
//
// For each tile of output rows, the depthwise result (P pixels x C channels) is computed into a
// thread-local buffer sized to stay in L2, activated, and consumed at once by a register-blocked
// GEMM against the pointwise weights (C x N): the intermediate never goes to memory.
//
// Vectorization uses GCC/Clang vector extensions of 8 floats (one AVX2 register; pairs of SSE
// registers elsewhere), with a 6 x 16 register-blocked GEMM micro-kernel (12 accumulators) on
// packed operands. Work is split over
// (batch, row tile) with at::parallel_for, i.e. torch's own thread pool and thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

typedef float v16 __attribute__((vector_size(32)));  // 8 floats; the name is kept short

static inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
static inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
static inline v16 splat(float x) { return v16{x, x, x, x, x, x, x, x}; }
constexpr int VL = 8;  // floats per vector

static inline float act_scalar(float v, int64_t act) {
  if (act == 1) return v > 0.f ? v : 0.f;
  if (act == 2) return std::min(std::max(v, 0.f), 6.f);
  return v;
}

static inline v16 act_vec(v16 v, int64_t act) {
  if (act == 0) return v;
  v16 zero = splat(0.f);
  v = v > zero ? v : zero;
  if (act == 2) { v16 six = splat(6.f); v = v < six ? v : six; }
  return v;
}

// out[p, n] = act(bias[n] + sum_c t[p, c] * w[c, n]) for p < P, n < N.
// The pointwise weights come prepacked as (ceil(N / 16), C, 16) panels (zero-padded) and the bias
// zero-padded to a multiple of 16; the depthwise tile t (P x C) is repacked here into MR-row panels
// (ceil(P / MR), C, MR), zero-padded, so the micro-kernel reads both operands contiguously. Loop
// order: a weight panel stays in L1/L2 while all pixel panels stream past it.
constexpr int MR = 6;
constexpr int NB = 16;

static void pack_rows(const float* t, int64_t P, int64_t C, float* ap) {
  const int64_t panels = (P + MR - 1) / MR;
  for (int64_t pb = 0; pb < panels; ++pb) {
    float* dst = ap + pb * C * MR;
    const int64_t rows = std::min<int64_t>(MR, P - pb * MR);
    for (int64_t c = 0; c < C; ++c)
      for (int m = 0; m < MR; ++m) dst[c * MR + m] = m < rows ? t[(pb * MR + m) * C + c] : 0.f;
  }
}

static void gemm_tile(const float* t, int64_t P, int64_t C, const float* wpack, int64_t N, const float* bias,
                      int64_t act, float* out, float* ap) {
  pack_rows(t, P, C, ap);
  const int64_t blocks = (N + NB - 1) / NB, panels = (P + MR - 1) / MR;
  alignas(64) float tmp[NB];
  for (int64_t nb = 0; nb < blocks; ++nb) {
    const int64_t n0 = nb * NB, width = std::min<int64_t>(NB, N - n0);
    const float* wp = wpack + nb * C * NB;
    const v16 b0 = bias ? load16(bias + n0) : splat(0.f), b1 = bias ? load16(bias + n0 + VL) : splat(0.f);
    for (int64_t pb = 0; pb < panels; ++pb) {
      v16 a0[MR], a1[MR];
      for (int m = 0; m < MR; ++m) { a0[m] = b0; a1[m] = b1; }
      const float* a = ap + pb * C * MR;
      for (int64_t c = 0; c < C; ++c) {
        const v16 w0 = load16(wp + c * NB), w1 = load16(wp + c * NB + VL);
        for (int m = 0; m < MR; ++m) {
          const v16 x = splat(a[c * MR + m]);
          a0[m] += x * w0;
          a1[m] += x * w1;
        }
      }
      const int mr = (int)std::min<int64_t>(MR, P - pb * MR);
      for (int m = 0; m < mr; ++m) {
        float* o = out + (pb * MR + m) * N + n0;
        if (width == NB) {
          store16(o, act_vec(a0[m], act));
          store16(o + VL, act_vec(a1[m], act));
        } else {
          store16(tmp, act_vec(a0[m], act));
          store16(tmp + VL, act_vec(a1[m], act));
          std::memcpy(o, tmp, width * sizeof(float));
        }
      }
    }
  }
}

// x: (B, C, H, W) channels_last; dw: (KH*KW, C); dw_bias: (C) or empty;
// pw: (ceil(N/16), C, 16) packed panels; pw_bias: (ceil(N/16) * 16) or empty; n_out: N.
torch::Tensor fused_dwpw(torch::Tensor x, torch::Tensor dw, torch::Tensor dw_bias, int64_t act_mid, torch::Tensor pw,
                         torch::Tensor pw_bias, int64_t n_out, int64_t act_out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                         int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t tile_bytes) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "fused_dwpw: expected a 4-D float32 input");
  x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t N = n_out;
  TORCH_CHECK(dw.size(0) == kh * kw && dw.size(1) == C, "fused_dwpw: depthwise weight shape");
  TORCH_CHECK(pw.dim() == 3 && pw.size(0) == (N + 15) / 16 && pw.size(1) == C && pw.size(2) == 16,
              "fused_dwpw: pointwise weight must be packed (ceil(N/16), C, 16)");
  TORCH_CHECK(pw_bias.numel() == 0 || pw_bias.numel() == pw.size(0) * 16, "fused_dwpw: padded bias");
  const int64_t Ho = (H + pt + pb - kh) / sh + 1, Wo = (W + pl + pr - kw) / sw + 1;
  TORCH_CHECK(Ho > 0 && Wo > 0, "fused_dwpw: empty output");
  auto out = at::empty({B, N, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xp = x.data_ptr<float>();
  const float* dwp = dw.contiguous().data_ptr<float>();
  const float* dbp = dw_bias.numel() ? dw_bias.contiguous().data_ptr<float>() : nullptr;
  const float* pwp = pw.contiguous().data_ptr<float>();
  const float* pbp = pw_bias.numel() ? pw_bias.contiguous().data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // rows per tile: the depthwise tile (rows * Wo * C floats) stays within tile_bytes (L2-sized)
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(Ho, tile_bytes / std::max<int64_t>(1, Wo * C * 4)));
  const int64_t tiles = (Ho + rows - 1) / rows;
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(rows * Wo * C + VL);
    std::vector<float> packed(((rows * Wo + MR - 1) / MR) * MR * C);
    float* t = buf.data();
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles, oh0 = (job % tiles) * rows, oh1 = std::min(Ho, oh0 + rows);
      const float* xb = xp + b * H * W * C;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        for (int64_t ow = 0; ow < Wo; ++ow) {
          float* acc = t + ((oh - oh0) * Wo + ow) * C;
          // accumulate 4 vectors (32 channels) in registers over all taps, then store once
          int64_t c0 = 0;
          for (; c0 + 4 * VL <= C; c0 += 4 * VL) {
            v16 a[4];
            for (int v = 0; v < 4; ++v) a[v] = dbp ? load16(dbp + c0 + v * VL) : splat(0.f);
            for (int64_t i = 0; i < kh; ++i) {
              const int64_t ih = oh * sh - pt + i;
              if (ih < 0 || ih >= H) continue;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t iw = ow * sw - pl + j;
                if (iw < 0 || iw >= W) continue;
                const float* xv = xb + (ih * W + iw) * C + c0;
                const float* wv = dwp + (i * kw + j) * C + c0;
                for (int v = 0; v < 4; ++v) a[v] += load16(xv + v * VL) * load16(wv + v * VL);
              }
            }
            for (int v = 0; v < 4; ++v) store16(acc + c0 + v * VL, act_vec(a[v], act_mid));
          }
          for (; c0 < C; ++c0) {  // remaining channels
            float a = dbp ? dbp[c0] : 0.f;
            for (int64_t i = 0; i < kh; ++i) {
              const int64_t ih = oh * sh - pt + i;
              if (ih < 0 || ih >= H) continue;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t iw = ow * sw - pl + j;
                if (iw < 0 || iw >= W) continue;
                a += xb[(ih * W + iw) * C + c0] * dwp[(i * kw + j) * C + c0];
              }
            }
            acc[c0] = act_scalar(a, act_mid);
          }
        }
      }
      gemm_tile(t, (oh1 - oh0) * Wo, C, pwp, N, pbp, act_out, op + ((b * Ho + oh0) * Wo) * N, packed.data());
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_dwpw", &fused_dwpw, "fused depthwise + pointwise convolution (inference, float32, NHWC)");
}
