// Shared by the torch-facing translation units: argument checks, threads, the pooled allocator for
// large outputs, and the active instruction set's kernels (kernels.h, isa.cpp). No vector code here:
// this is compiled with the baseline flags only.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.h"

namespace sepconv {

// ---- the instruction set's kernels (isa.cpp) ----
// the active ISA's kernels (the widest the CPU supports unless set_isa chose another)
const Kernels& kernels();
// the ISAs this CPU (and OS) supports, widest first
std::vector<std::string> supported_isas();
// makes `name` the active ISA ("" = the widest supported); refuses one the CPU lacks
std::string set_isa(const std::string& name);
// the data caches' sizes (per core) from the OS, a common size where it does not say
int64_t l1_bytes();
int64_t l2_bytes();
// the channel block of the GEMM's split sum for C channels (C: no split), from the L2 size
int64_t split_kc(const Kernels& k, int64_t C);

// floor(a / b) for b > 0. C++ division truncates toward zero (-1 / 2 == 0), which for a negative
// numerator (an input smaller than the kernel) gives one output too many.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// ---- argument checks of the kernels' entry points (each a RuntimeError naming op and argument) ----
// bound on sizes, pads, strides, dilations: keeps every index computation far from int64 overflow
constexpr int64_t MAX_GEOMETRY = (int64_t(1) << 31) - 1;

// t: a `dim`-D float32 CPU tensor
inline void check_float(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim && t.scalar_type() == at::kFloat && t.device().is_cpu(), op, ": ", name, ": expected a ", dim,
              "-D float32 CPU tensor, got ", t.dim(), "-D ", t.scalar_type(), " on ", t.device());
}

// v in [lo, MAX_GEOMETRY]
inline void check_int(int64_t v, int64_t lo, const char* op, const char* name) {
  TORCH_CHECK(v >= lo && v <= MAX_GEOMETRY, op, ": ", name, ": expected an int in [", lo, ", ", MAX_GEOMETRY, "], got ", v);
}

// several check_int at once: {name, value, lo}
struct IntArg {
  const char* name;
  int64_t value, lo;
};
inline void check_ints(const char* op, std::initializer_list<IntArg> args) {
  for (const auto& a : args) check_int(a.value, a.lo, op, a.name);
}

// an activation code: 0 none, 1 ReLU, 2 ReLU6
inline void check_act(int64_t act, const char* op, const char* name) {
  TORCH_CHECK(act >= 0 && act <= 2, op, ": ", name, ": expected 0 (none), 1 (ReLU) or 2 (ReLU6), got ", act);
}

// An output size along one dim of a convolution (of extent dilation (k - 1) + 1), checking first that
// the padded input holds the kernel at least once (else the truncating division would give 1).
inline int64_t conv_out_size(const char* op, const char* dim, int64_t in, int64_t pad_before, int64_t pad_after, int64_t k,
                             int64_t stride, int64_t dilation) {
  const int64_t extent = dilation * (k - 1) + 1, padded = in + pad_before + pad_after;
  TORCH_CHECK(padded >= extent, op, ": input ", dim, " ", in, " padded to ", padded, " is smaller than the kernel's extent ",
              extent);
  return (padded - extent) / stride + 1;
}

// Runs body(claim) once on each of torch's threads (at most `jobs` of them); claim() returns the
// next unclaimed job of [0, jobs), or a value >= jobs when none is left. Claiming jobs one at a
// time instead of a fixed share per thread keeps all threads busy to the end when one of them is
// slowed by other work on its core: with a CPU-bound process next to it on one core, MobileNetV1
// at batch 8 ran 138 ms against 178 with fixed shares (equal without it).
template <class Body>
inline void parallel_claim(int64_t jobs, const Body& body) {
  std::atomic<int64_t> next{0};
  const auto claim = [&next] { return next.fetch_add(1, std::memory_order_relaxed); };
  const int64_t threads = std::min<int64_t>(std::max(1, at::get_num_threads()), jobs);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { body(claim); });
}

// Output buffers. A large tensor freed by its consumer goes back to the OS (glibc unmaps blocks
// over its mmap threshold), so allocating it afresh on the next call pays a page fault and a
// zero-fill per 4 KiB page — at batch 8 that costs as much as the convolution itself. Like an
// inference engine's arena, outputs of 1 MiB and more therefore come from a small caching
// allocator: when the last reference to such a tensor's storage goes (tensor, views, NumPy
// arrays, graph values: the storage's own refcount decides), its memory returns to an idle list
// (at most POOL_SIZE blocks, the rest freed) and the next output that fits reuses it.
// Memory still referenced is never reused.
constexpr int64_t POOL_MIN_BYTES = int64_t(1) << 20;
constexpr size_t POOL_SIZE = 16;

struct PooledBlock {
  void* ptr;
  size_t bytes;
};
// never destroyed: tensors may outlive static destruction at exit
inline std::mutex& pool_mutex = *new std::mutex;
inline std::vector<PooledBlock*>& idle_blocks = *new std::vector<PooledBlock*>;

inline void pooled_free(void* ctx) {
  auto* block = static_cast<PooledBlock*>(ctx);
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (idle_blocks.size() < POOL_SIZE) {
      idle_blocks.push_back(block);
      return;
    }
  }
  c10::free_cpu(block->ptr);
  delete block;
}

struct PoolAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    PooledBlock* block = nullptr;
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      // the most recently freed block that fits (up to 4x the size): its lines are the likeliest
      // to be in cache still (often the input the previous layer just read), so writing the
      // output does not first fetch every line from DRAM; the oldest block of the exact size was
      // taken before (MobileNetV1 at batch 1: 1-2% faster whole, in one process, on Zen 4)
      for (size_t i = idle_blocks.size(); i-- > 0;)
        if (idle_blocks[i]->bytes >= n && idle_blocks[i]->bytes <= 4 * n) {
          block = idle_blocks[i];
          idle_blocks.erase(idle_blocks.begin() + i);
          break;
        }
    }
    if (!block) block = new PooledBlock{c10::alloc_cpu(n), n};
    return {block->ptr, block, &pooled_free, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
};
inline PoolAllocator pool_allocator;

// A float32 CPU tensor of `sizes` in `format`, from the pool when it is 1 MiB or more.
inline at::Tensor new_output(at::IntArrayRef sizes, at::MemoryFormat format) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  if (numel * 4 < POOL_MIN_BYTES) return at::empty(sizes, at::TensorOptions().dtype(at::kFloat).memory_format(format));
  return at::detail::empty_generic(sizes, &pool_allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), at::kFloat, format);
}

// Frees the idle pooled blocks (blocks in use return to the idle list when released, as before).
inline void release_buffers() {
  std::vector<PooledBlock*> blocks;
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    blocks.swap(idle_blocks);
  }
  for (auto* b : blocks) {
    c10::free_cpu(b->ptr);
    delete b;
  }
}

}  // namespace sepconv
