// Pieces every libFuzzer target here shares: an abort-on-failure check (libFuzzer reports the
// abort as a crash and keeps the input), a sink that keeps reads from being optimised away, the
// small RNG that turns the input's first bytes into split points, and a buffer that ends exactly
// where its allocation ends (so ASan catches a read one byte past the data).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#define FUZZ_CHECK(cond)  \
  do {                    \
    if (!(cond)) abort(); \
  } while (0)

namespace fulmen::fuzz {

inline volatile unsigned g_sink;  // reading every view into this keeps the reads from being optimised out

// xorshift32: deterministic for a given seed byte, so a saved input replays the same splits.
struct Rng {
  uint32_t s;
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
  }
};

// A copy of `src` in a buffer that ends exactly where the allocation ends.
struct ExactBuf {
  char* p;
  explicit ExactBuf(const char* src, size_t n) : p(static_cast<char*>(malloc(n ? n : 1))) {
    if (n) memcpy(p, src, n);
  }
  ~ExactBuf() { free(p); }
  ExactBuf(const ExactBuf&) = delete;
  ExactBuf& operator=(const ExactBuf&) = delete;
};

// Reads every byte of v.
inline void touch(std::string_view v) {
  unsigned acc = 0;
  for (char c : v) acc += static_cast<uint8_t>(c);
  g_sink = g_sink + acc;
}

}  // namespace fulmen::fuzz
