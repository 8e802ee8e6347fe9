#include "core/base/allocator.hpp"

#include <atomic>
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fulmen::base {

bool tune_allocator() noexcept {
#if defined(__GLIBC__)
  static std::atomic<bool> done{false};
  if (done.exchange(true)) return false;
  for (const char* name : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"}) {
    if (std::getenv(name)) return false;  // the user tuned glibc: leave it alone
  }
  // Setting any threshold turns off glibc's dynamic adjustment of both, so set both.
  return mallopt(M_MMAP_THRESHOLD, int(kMmapThreshold)) == 1 &&
         mallopt(M_TRIM_THRESHOLD, int(kTrimThreshold)) == 1;
#else
  return false;
#endif
}

}  // namespace fulmen::base
