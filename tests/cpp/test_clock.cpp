// Clock (src/core/base/clock.hpp): the cached HTTP Date (IMF-fixdate) and access-log timestamps
// must have their fixed shape and agree with the wall clock.
#include "core/base/clock.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <string>

namespace fulmen::base {
namespace {

TEST(Clock, HttpDateIsImfFixdate) {
  Clock c;
  std::string d(c.http_date());
  ASSERT_EQ(d.size(), 29u) << d;
  EXPECT_EQ(d.substr(3, 2), ", ");
  EXPECT_EQ(d.substr(25), " GMT");
  EXPECT_EQ(d[7], ' ');
  EXPECT_EQ(d[11], ' ');
  EXPECT_EQ(d[16], ' ');
  EXPECT_EQ(d[19], ':');
  EXPECT_EQ(d[22], ':');
  EXPECT_EQ(d.find('\0'), std::string::npos);
}

TEST(Clock, IsoDateIsRfc3339AndAgreesWithTheLogDate) {
  Clock c;
  std::string iso(c.iso_date()), log(c.log_date());
  ASSERT_EQ(iso.size(), 25u) << iso;
  tm a{}, b{};
  const char* end = strptime(iso.c_str(), "%Y-%m-%dT%H:%M:%S+00:00", &a);
  ASSERT_NE(end, nullptr) << iso;
  EXPECT_EQ(*end, '\0') << iso;
  ASSERT_NE(strptime(log.c_str(), "%d/%b/%Y:%H:%M:%S +0000", &b), nullptr) << log;
  EXPECT_EQ(timegm(&a), timegm(&b)) << iso << " vs " << log;  // the same slot, the same second
}

TEST(Clock, HttpDateParsesBackToNow) {
  Clock c;
  std::string d(c.http_date());
  tm t{};
  const char* end = strptime(d.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &t);
  ASSERT_NE(end, nullptr) << d;
  EXPECT_EQ(*end, '\0') << d;
  time_t parsed = timegm(&t);
  time_t now = time(nullptr);
  // The coarse realtime clock may lag a few ms, so allow the second boundary either side.
  EXPECT_LE(std::llabs(static_cast<long long>(now - parsed)), 1) << d;
}

TEST(Clock, LogDateIsCommonLogFormat) {
  Clock c;
  std::string d(c.log_date());
  ASSERT_EQ(d.size(), 26u) << d;
  EXPECT_EQ(d[2], '/');
  EXPECT_EQ(d[6], '/');
  EXPECT_EQ(d[11], ':');
  EXPECT_EQ(d.substr(20), " +0000");
  tm t{};
  const char* end = strptime(d.c_str(), "%d/%b/%Y:%H:%M:%S +0000", &t);
  ASSERT_NE(end, nullptr) << d;
  EXPECT_EQ(*end, '\0');
  EXPECT_LE(std::llabs(static_cast<long long>(time(nullptr) - timegm(&t))), 1) << d;
}

TEST(Clock, DatesAgreeWithEachOther) {
  Clock c;
  tm a{}, b{};
  std::string h(c.http_date()), l(c.log_date());
  ASSERT_NE(strptime(h.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &a), nullptr);
  ASSERT_NE(strptime(l.c_str(), "%d/%b/%Y:%H:%M:%S +0000", &b), nullptr);
  EXPECT_EQ(timegm(&a), timegm(&b));
}

TEST(Clock, WeekdayMatchesDate) {
  Clock c;
  std::string d(c.http_date());
  tm t{};
  ASSERT_NE(strptime(d.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &t), nullptr);
  int wday_parsed = t.tm_wday;
  time_t secs = timegm(&t);
  tm check{};
  gmtime_r(&secs, &check);
  EXPECT_EQ(check.tm_wday, wday_parsed) << d;
}

TEST(Clock, NowMsIsMonotonicAcrossUpdates) {
  Clock c;
  int64_t a = c.now_ms();
  c.update();
  int64_t b = c.now_ms();
  EXPECT_GE(b, a);
  EXPECT_GT(a, 0);
}

TEST(Clock, UpdateKeepsShapeAcrossSeconds) {
  Clock c;
  // Spin (no sleep) until the wall second changes, so update() reformats at least once.
  time_t start = time(nullptr);
  timespec deadline;
  clock_gettime(CLOCK_MONOTONIC, &deadline);
  for (;;) {
    c.update();
    if (time(nullptr) != start) break;
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - deadline.tv_sec > 3) FAIL() << "wall clock did not advance";
  }
  c.update();
  EXPECT_EQ(c.http_date().size(), 29u);
  tm t{};
  std::string d(c.http_date());
  ASSERT_NE(strptime(d.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &t), nullptr) << d;
  EXPECT_LE(std::llabs(static_cast<long long>(time(nullptr) - timegm(&t))), 1) << d;
}

}  // namespace
}  // namespace fulmen::base
