// Which instruction set's kernels run (kernels.h): the widest the CPU and OS support, or one
// chosen with set_isa (sepconv._fused applies $SEPCONV_ISA through it); and the cache sizes the
// blocking is derived from. Baseline flags only: nothing here needs more than x86-64 (or the
// host's baseline), so loading the extension is safe on any CPU.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "common.h"

namespace sepconv {

namespace {

const Kernels* const all_kernels[] = {&avx512::table, &avx2::table, &generic::table};

bool supported(const Kernels& k) {
  const std::string name = k.name;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // GCC's and Clang's checks include the OS's support (XGETBV) for the wider register state
  if (name == "avx512")
    return k.gemm && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  if (name == "avx2") return k.gemm && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  if (name != "generic") return false;
#endif
  return name == "generic";
}

const Kernels* widest() {
  for (const Kernels* k : all_kernels)
    if (supported(*k)) return k;
  return &generic::table;
}

std::atomic<const Kernels*> current{nullptr};

// a cache's size in bytes from /sys (type "Data" or "Unified" at `level`), 0 if not found
int64_t sys_cache_size(int level) {
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lf(dir + "level"), tf(dir + "type"), sf(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(lf >> l) || !(tf >> type) || !(sf >> size)) continue;
    if (l != level || type == "Instruction" || size.empty()) continue;
    int64_t n = std::stoll(size);
    const char unit = size.back();
    return unit == 'K' ? n << 10 : unit == 'M' ? n << 20 : n;
  }
  return 0;
}

int64_t cache_size(int level) {
  long n = 0;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  n = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
#endif
  if (n <= 0) n = sys_cache_size(level);
  // unknown, or absurd: a common size
  if (n < 8 * 1024 || n > (int64_t(1) << 30)) n = level == 1 ? 32 * 1024 : 1024 * 1024;
  return n;
}

}  // namespace

const Kernels& kernels() {
  const Kernels* k = current.load(std::memory_order_acquire);
  if (!k) {
    k = widest();
    current.store(k, std::memory_order_release);
  }
  return *k;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const Kernels* k : all_kernels)
    if (supported(*k)) names.push_back(k->name);
  return names;
}

std::string set_isa(const std::string& name) {
  std::string known;
  for (const Kernels* k : all_kernels) {
    known += std::string(known.empty() ? "" : ", ") + "'" + k->name + "'";
    if (name != k->name) continue;
    TORCH_CHECK(supported(*k), "isa: this CPU does not support '", name, "' (it supports ",
                c10::Join(", ", supported_isas()), ")");
    current.store(k, std::memory_order_release);
    return name;
  }
  TORCH_CHECK(name.empty(), "isa: expected one of ", known, ", got '", name, "'");
  current.store(widest(), std::memory_order_release);  // "": the widest the CPU supports
  return kernels().name;
}

int64_t l1_bytes() {
  static const int64_t n = cache_size(1);
  return n;
}

int64_t l2_bytes() {
  static const int64_t n = cache_size(2);
  return n;
}

int64_t kc_block(const Kernels& k) {
  // a block of weight panels (kc x cols floats) reused by every row step, streamed from L2: a step
  // reads NV = cols / vl weight vectors per MR broadcasts (2 per 6 for AVX2, 4 per 6 for AVX-512),
  // which L2 serves at full speed, so the block fills a quarter of L2 instead of fitting L1 (a
  // smaller block adds a pass over the partial sums every kc channels). Zen 4, AVX-512: 1024-deep
  // GEMMs unsplit ran at the FMA peak; Zen 1, AVX2 (L2 512 KiB: blocks of 2048, not 256 from
  // half of L1): 30 x 1024 x 1024 1.09x and 196 x 512 x 512 1.06x as fast, shallower ones alike
  return std::max<int64_t>(64, l2_bytes() / 4 / (k.cols * 4) / 16 * 16);
}

int64_t split_kc(const Kernels& k, int64_t C) {
  const int64_t kc = kc_block(k);
  return C > kc + kc / 2 ? kc : C;
}

}  // namespace sepconv
