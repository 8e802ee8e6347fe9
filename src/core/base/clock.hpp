// Time as the engine sees it: a monotonic millisecond clock for timers, read once per loop
// iteration, and the HTTP Date / access-log timestamps, formatted at most once per second.
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>
#include <string_view>

namespace fulmen::base {

// CLOCK_MONOTONIC read now (about 30 ns through the vDSO), for the few places that need a finer
// or fresher time than Clock's once-per-iteration milliseconds.
inline int64_t monotonic_ns() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}
inline int64_t monotonic_us() noexcept { return monotonic_ns() / 1000; }
inline int64_t monotonic_ms() noexcept { return monotonic_ns() / 1'000'000; }

class Clock {
 public:
  Clock() { update(); }
  // Reads the clocks; call once per loop wake-up.
  void update() noexcept;
  int64_t now_ms() const noexcept { return now_ms_; }
  // "Tue, 24 Nov 2026 22:30:00 GMT" (RFC 9110 IMF-fixdate), refreshed when the second changes.
  // Safe to read from pool threads: the loop writes the other of two slots, then flips.
  std::string_view http_date() const noexcept {
    return {slots_[cur_.load(std::memory_order_acquire)].http, 29};
  }
  // "24/Nov/2026:22:30:00 +0000" for common-log-format access lines.
  std::string_view log_date() const noexcept {
    return {slots_[cur_.load(std::memory_order_acquire)].log, 26};
  }
  // "2026-11-24T22:30:00+00:00" (RFC 3339) for JSON access lines.
  std::string_view iso_date() const noexcept {
    return {slots_[cur_.load(std::memory_order_acquire)].iso, 25};
  }

 private:
  int64_t now_ms_ = 0;
  time_t wall_sec_ = -1;
  struct Slot {
    char http[32] = {};
    char log[32] = {};
    char iso[64] = {};  // room for any year snprintf could print, not just 4 digits
  };
  Slot slots_[2];
  std::atomic<int> cur_{0};
};

}  // namespace fulmen::base
