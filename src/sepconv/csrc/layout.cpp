// A network's input in the layout the optimized model runs in: NCHW to NHWC (channels_last).
//
// The optimized model converts every 4-D input it is given; for the usual NCHW image batch that
// copy is the first thing each call does. PyTorch's copy of a 3-channel image makes one strided
// pass per element and writes into a freshly allocated tensor (at batch 8, a 4.8 MB one whose
// pages fault in on every call): it took 0.08 ms of MobileNetV1's 5 ms at batch 1 and 1 ms of 44 at
// batch 8. Here the rows of the C planes are interleaved by the active instruction set's
// `interleave` (vectorized with permutes for 3 planes), rows split over the threads, into an output
// from the pooled allocator (common.h). Anything else (another dtype or device, a non-contiguous
// input, more than MAX_CHANNELS channels) is PyTorch's own copy. The result is always a new tensor
// (an input already channels_last is copied: the op's schema promises no alias; callers skip it).
#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"

using namespace sepconv;

namespace {

constexpr int64_t MAX_CHANNELS = 4;  // deeper inputs: PyTorch's copy (a tiled transpose) does well
constexpr int64_t ROWS_PER_JOB = 8;

}  // namespace

torch::Tensor to_channels_last(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 4, "to_channels_last: x: expected a 4-D tensor, got ", x.dim(), "-D of shape ", x.sizes());
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x.clone(at::MemoryFormat::ChannelsLast);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (x.scalar_type() != at::kFloat || !x.device().is_cpu() || !x.is_contiguous() || C > MAX_CHANNELS)
    return x.contiguous(at::MemoryFormat::ChannelsLast);
  auto out = new_output({B, C, H, W}, at::MemoryFormat::ChannelsLast);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const Kernels& isa = kernels();
  const int64_t plane = H * W, rows = B * H, jobs = (rows + ROWS_PER_JOB - 1) / ROWS_PER_JOB;
  parallel_claim(jobs, [&](const auto& claim) {
    for (int64_t job = claim(); job < jobs; job = claim())
      for (int64_t r = job * ROWS_PER_JOB; r < std::min(rows, (job + 1) * ROWS_PER_JOB); ++r) {
        const int64_t b = r / H, h = r % H;
        isa.interleave(xp + b * C * plane + h * W, plane, C, op + (b * plane + h * W) * C, W);
      }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(sepconv, m) { m.def("to_channels_last(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(sepconv, CPU, m) { m.impl("to_channels_last", &to_channels_last); }
