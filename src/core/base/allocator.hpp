// Process-wide tuning of the C allocator for a long-running server process.
#pragma once

#include <cstddef>

namespace fulmen::base {

// glibc's defaults suit short programs: a free block above 128 KiB at the top of the heap is
// given back to the kernel at once (M_TRIM_THRESHOLD), and a block of 128 KiB or more is its own
// mmap() (M_MMAP_THRESHOLD). A server frees and allocates blocks of the same sizes all the time:
// a 64 KiB WebSocket message becomes a 64 KiB bytes object for the app, freed after the echo.
// Measured on ws-echo-64k: with the defaults the server took ~1.5 page faults per message (each
// freed block trimmed, each new one faulted back in page by page), and about 15 % of its CPU
// time. The thresholds below keep up to kTrimThreshold of free memory at the heap top and serve
// blocks below kMmapThreshold from the heap, where they are reused. Applied once per process;
// a no-op on other C libraries, or when the user set MALLOC_TRIM_THRESHOLD_ /
// MALLOC_MMAP_THRESHOLD_ / MALLOC_TOP_PAD_ themselves (their choice wins).
inline constexpr size_t kTrimThreshold = 16u << 20;
inline constexpr size_t kMmapThreshold = 4u << 20;

// True if the thresholds were set by this call (false: already done, not glibc, or left to the
// user's environment).
bool tune_allocator() noexcept;

}  // namespace fulmen::base
