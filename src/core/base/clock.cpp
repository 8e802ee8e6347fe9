// Cached clocks; see clock.hpp.
#include "core/base/clock.hpp"

#include <cstdio>

namespace fulmen::base {

namespace {
constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
}  // namespace

void Clock::update() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  now_ms_ = int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
  timespec wall;
  clock_gettime(CLOCK_REALTIME_COARSE, &wall);
  if (wall.tv_sec == wall_sec_) return;
  wall_sec_ = wall.tv_sec;
  tm t;
  gmtime_r(&wall_sec_, &t);
  int next = 1 - cur_.load(std::memory_order_relaxed);
  Slot& sl = slots_[next];
  std::snprintf(sl.http, sizeof sl.http, "%s, %02d %s %04d %02d:%02d:%02d GMT",
                kDays[t.tm_wday], t.tm_mday, kMonths[t.tm_mon], t.tm_year + 1900, t.tm_hour,
                t.tm_min, t.tm_sec);
  std::snprintf(sl.log, sizeof sl.log, "%02d/%s/%04d:%02d:%02d:%02d +0000", t.tm_mday,
                kMonths[t.tm_mon], t.tm_year + 1900, t.tm_hour, t.tm_min, t.tm_sec);
  std::snprintf(sl.iso, sizeof sl.iso, "%04d-%02d-%02dT%02d:%02d:%02d+00:00", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec);
  cur_.store(next, std::memory_order_release);
}

}  // namespace fulmen::base
