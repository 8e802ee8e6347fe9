// Time as the engine sees it: a monotonic millisecond clock for timers, read once per loop
// iteration, and the HTTP Date / access-log timestamps, formatted at most once per second.
#pragma once

#include <cstdint>
#include <ctime>
#include <string_view>

namespace fulmen::base {

class Clock {
 public:
  Clock() { update(); }
  // Reads the clocks; call once per loop wake-up.
  void update() noexcept;
  int64_t now_ms() const noexcept { return now_ms_; }
  // "Tue, 24 Nov 2026 22:30:00 GMT" (RFC 9110 IMF-fixdate), refreshed when the second changes.
  std::string_view http_date() const noexcept { return {http_date_, 29}; }
  // "24/Nov/2026:22:30:00 +0000" for common-log-format access lines.
  std::string_view log_date() const noexcept { return {log_date_, 26}; }

 private:
  int64_t now_ms_ = 0;
  time_t wall_sec_ = -1;
  char http_date_[32] = {};
  char log_date_[32] = {};
};

}  // namespace fulmen::base
