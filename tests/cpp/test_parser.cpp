// Request-head parser tests. Most cases are data (tests/vectors/http1/*.md); each vector is replayed
// whole, at every split point (a prefix must give kIncomplete or the final outcome, and a re-call
// with the scan_from hint must then give the final outcome), and as a stream growing one byte at
// a time. Every buffer ends exactly at the end of its allocation.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "http1_support.hpp"

using namespace fulmen;
using namespace fulmen::http1;
using fulmen::test::ExactBuffer;
using fulmen::test::Vector;

namespace {

// A parse result copied out of the buffer (which is freed right after parsing).
struct Outcome {
  ptrdiff_t n = 0;
  ParseError err = ParseError::kNone;
  std::string method, target, scheme, authority, path, query, host;
  Method method_id = Method::kOther;
  int minor = -1;
  std::vector<std::pair<std::string, std::string>> headers;
  BodyKind body = BodyKind::kNone;
  uint64_t content_length = 0;
  bool keep_alive = false, expect_continue = false, upgrade = false;

  bool operator==(const Outcome&) const = default;
};

std::string describe(const Outcome& o) {
  if (o.n == kIncomplete) return "incomplete";
  if (o.n == kError) return std::string("error ") + test::error_name(o.err);
  return "ok n=" + std::to_string(o.n) + " " + o.method + " " + o.target;
}

Outcome parse(const std::string& in, size_t k, const Limits& lim, size_t max_head, size_t* scan) {
  ExactBuffer b(in.data(), k);
  std::vector<Header> hs(lim.max_fields);
  Request r;
  r.headers = hs.data();
  r.headers_capacity = hs.size();
  Outcome o;
  o.n = parse_request_head(b.p, k, lim, r, &o.err, scan, max_head);
  if (o.n <= 0) return o;
  auto in_buf = [&](std::string_view v) {
    return v.empty() || v == "/" || (v.data() >= b.p && v.data() + v.size() <= b.p + o.n);
  };
  for (auto v : {r.method, r.target, r.scheme, r.authority, r.path, r.query, r.host}) EXPECT_TRUE(in_buf(v));
  o.method = r.method;
  o.target = r.target;
  o.scheme = r.scheme;
  o.authority = r.authority;
  o.path = r.path;
  o.query = r.query;
  o.host = r.host;
  o.method_id = r.method_id;
  o.minor = r.version_minor;
  for (size_t i = 0; i < r.num_headers; ++i) {
    EXPECT_TRUE(in_buf(r.headers[i].name) && in_buf(r.headers[i].value));
    o.headers.emplace_back(r.headers[i].name, r.headers[i].value);
  }
  o.body = r.body;
  o.content_length = r.content_length;
  o.keep_alive = r.keep_alive;
  o.expect_continue = r.expect_continue;
  o.upgrade = r.upgrade;
  return o;
}

const char* body_name(BodyKind k) {
  return k == BodyKind::kNone ? "none" : k == BodyKind::kLength ? "length" : "chunked";
}

const char* method_name(Method m) {
  switch (m) {
    case Method::kGet: return "GET";
    case Method::kHead: return "HEAD";
    case Method::kPost: return "POST";
    case Method::kPut: return "PUT";
    case Method::kDelete: return "DELETE";
    case Method::kOptions: return "OPTIONS";
    case Method::kPatch: return "PATCH";
    case Method::kConnect: return "CONNECT";
    case Method::kTrace: return "TRACE";
    case Method::kOther: return "other";
  }
  return "?";
}

void check_expectations(const Vector& v, const Outcome& o) {
  const std::string* outcome = v.get("outcome");
  ASSERT_NE(outcome, nullptr) << "vector has no 'outcome:' line";
  if (*outcome == "incomplete") {
    EXPECT_EQ(o.n, kIncomplete) << describe(o);
    return;
  }
  if (*outcome != "ok") {
    ASSERT_EQ(o.n, kError) << describe(o);
    EXPECT_EQ(test::error_name(o.err), *outcome);
    if (const std::string* st = v.get("status")) {
      EXPECT_EQ(std::to_string(error_status(o.err)), *st);
    }
    return;
  }
  ASSERT_GT(o.n, 0) << describe(o);
  const std::string* hl = v.get("head_len");
  EXPECT_EQ(static_cast<size_t>(o.n), hl ? std::stoul(*hl) : v.input.size());
  auto str = [&](const char* key, const std::string& got) {
    if (const std::string* e = v.get(key)) {
      EXPECT_EQ(got, test::unescape(*e)) << key;
    }
  };
  auto flag = [&](const char* key, bool got) {
    if (const std::string* e = v.get(key)) {
      EXPECT_EQ(got ? "true" : "false", *e) << key;
    }
  };
  str("method", o.method);
  str("target", o.target);
  str("scheme", o.scheme);
  str("authority", o.authority);
  str("path", o.path);
  str("query", o.query);
  str("host", o.host);
  if (const std::string* e = v.get("method_id")) {
    EXPECT_EQ(method_name(o.method_id), *e);
  }
  if (const std::string* e = v.get("version")) {
    EXPECT_EQ("1." + std::to_string(o.minor), *e);
  }
  if (const std::string* e = v.get("headers")) {
    EXPECT_EQ(std::to_string(o.headers.size()), *e);
  }
  std::vector<std::string> hs = v.all("header");
  ASSERT_LE(hs.size(), o.headers.size());
  for (size_t i = 0; i < hs.size(); ++i) {
    // "Name|value": the bar keeps empty and space-edged values visible.
    size_t bar = hs[i].find('|');
    ASSERT_NE(bar, std::string::npos) << "header expectations are written Name|value";
    EXPECT_EQ(o.headers[i].first, test::unescape(hs[i].substr(0, bar)));
    EXPECT_EQ(o.headers[i].second, test::unescape(hs[i].substr(bar + 1)));
  }
  if (const std::string* e = v.get("body")) {
    EXPECT_EQ(body_name(o.body), *e);
  }
  if (const std::string* e = v.get("content_length")) {
    EXPECT_EQ(std::to_string(o.content_length), *e);
  }
  flag("keep_alive", o.keep_alive);
  flag("expect_continue", o.expect_continue);
  flag("upgrade", o.upgrade);
}

class RequestVector : public ::testing::TestWithParam<Vector> {};

TEST_P(RequestVector, Whole) {
  const Vector& v = GetParam();
  Limits lim;
  size_t max_head = 65536;
  test::apply_limits(v, lim, max_head);
  size_t scan = 0;
  Outcome o = parse(v.input, v.input.size(), lim, max_head, &scan);
  check_expectations(v, o);
}

TEST_P(RequestVector, EverySplit) {
  const Vector& v = GetParam();
  Limits lim;
  size_t max_head = 65536;
  test::apply_limits(v, lim, max_head);
  size_t scan = 0;
  const Outcome final_o = parse(v.input, v.input.size(), lim, max_head, &scan);
  for (size_t k = 0; k < v.input.size(); ++k) {
    scan = 0;
    Outcome a = parse(v.input, k, lim, max_head, &scan);
    if (a.n == kIncomplete) {
      EXPECT_LE(scan, k);
      Outcome b = parse(v.input, v.input.size(), lim, max_head, &scan);
      EXPECT_EQ(b, final_o) << "after a prefix of " << k << ": " << describe(b) << " vs " << describe(final_o);
    } else {
      EXPECT_EQ(a, final_o) << "prefix of " << k << ": " << describe(a) << " vs " << describe(final_o);
    }
  }
}

TEST_P(RequestVector, ByteByByte) {
  const Vector& v = GetParam();
  Limits lim;
  size_t max_head = 65536;
  test::apply_limits(v, lim, max_head);
  size_t scan = 0;
  const Outcome final_o = parse(v.input, v.input.size(), lim, max_head, &scan);
  scan = 0;
  Outcome a;
  for (size_t k = 0; k <= v.input.size(); ++k) {
    a = parse(v.input, k, lim, max_head, &scan);
    if (a.n != kIncomplete) break;
  }
  EXPECT_EQ(a, final_o) << describe(a) << " vs " << describe(final_o);
}

std::vector<Vector> request_vectors() { return test::load_vectors(FULMEN_VECTORS_DIR "/http1", "http"); }

INSTANTIATE_TEST_SUITE_P(Http1, RequestVector, ::testing::ValuesIn(request_vectors()),
                         [](const ::testing::TestParamInfo<Vector>& i) { return test::test_name(i.param, i.index); });

// ---- cases that are easier as code than as data ----------------------------------------------

TEST(Parser, VectorsWereFound) { EXPECT_GE(request_vectors().size(), 60u); }

// Limits at their defaults: N is accepted, N+1 refused, and the refusal comes as soon as the
// N+1th byte is there (no CRLF needed).
TEST(Parser, DefaultRequestLineLimit) {
  Limits lim;
  std::string pre = "GET /";
  std::string suf = " HTTP/1.1";
  std::string at_limit = pre + std::string(lim.max_request_line - pre.size() - suf.size(), 'a') + suf;
  ASSERT_EQ(at_limit.size(), lim.max_request_line);
  size_t scan = 0;
  std::string ok = at_limit + "\r\nHost: h\r\n\r\n";
  EXPECT_GT(parse(ok, ok.size(), lim, 65536, &scan).n, 0);
  std::string over = "GET /" + std::string(lim.max_request_line, 'a');
  scan = 0;
  Outcome o = parse(over, lim.max_request_line + 1, lim, 65536, &scan);
  EXPECT_EQ(o.err, ParseError::kRequestLineTooLong);
  EXPECT_EQ(error_status(o.err), 414);
  scan = 0;
  EXPECT_EQ(parse(over, lim.max_request_line, lim, 65536, &scan).n, kIncomplete);
}

TEST(Parser, DefaultFieldLimits) {
  Limits lim;
  std::string head = "GET / HTTP/1.1\r\nHost: h\r\n";
  std::string name = "X-Long: ";
  std::string field = name + std::string(lim.max_field_size - name.size(), 'v');
  std::string ok = head + field + "\r\n\r\n";
  size_t scan = 0;
  EXPECT_GT(parse(ok, ok.size(), lim, 65536, &scan).n, 0);
  std::string over = head + field + "v";
  scan = 0;
  EXPECT_EQ(parse(over, over.size(), lim, 65536, &scan).err, ParseError::kHeaderTooLarge);

  std::string many = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (size_t i = 1; i < lim.max_fields; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
  scan = 0;
  Outcome o = parse(many + "\r\n", many.size() + 2, lim, 65536, &scan);
  ASSERT_GT(o.n, 0);
  EXPECT_EQ(o.headers.size(), lim.max_fields);
  many += "X-last: v\r\n\r\n";
  scan = 0;
  EXPECT_EQ(parse(many, many.size(), lim, 65536, &scan).err, ParseError::kTooManyHeaders);
}

// A slow client sending a large head one byte per read: the hint keeps the cost per read to the
// current line, and the outcome matches a single read.
TEST(Parser, SlowlorisHintAdvancesByLine) {
  Limits lim;
  std::string req = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (int i = 0; i < 90; ++i) req += "X-Field-" + std::to_string(i) + ": some value here\r\n";
  req += "\r\n";
  size_t scan = 0;
  size_t last_scan = 0;
  for (size_t k = 1; k < req.size(); ++k) {
    Outcome o = parse(req, k, lim, 65536, &scan);
    ASSERT_EQ(o.n, kIncomplete) << k;
    ASSERT_GE(scan, last_scan);
    ASSERT_TRUE(scan == 0 || (req[scan - 1] == '\n')) << "hint is a line start";
    last_scan = scan;
  }
  EXPECT_GT(last_scan, req.size() - 40);
  Outcome o = parse(req, req.size(), lim, 65536, &scan);
  ASSERT_EQ(o.n, static_cast<ptrdiff_t>(req.size()));
  EXPECT_EQ(o.headers.size(), 91u);
}

TEST(Parser, StaleHintIsIgnored) {
  Limits lim;
  std::string req = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  size_t scan = 1000;
  EXPECT_EQ(parse(req, req.size(), lim, 65536, &scan).n, static_cast<ptrdiff_t>(req.size()));
}

TEST(Parser, NullErrorAndHintPointers) {
  Limits lim;
  std::string req = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  Header hs[4];
  Request r;
  r.headers = hs;
  r.headers_capacity = 4;
  EXPECT_EQ(parse_request_head(req.data(), req.size(), lim, r, nullptr, nullptr), static_cast<ptrdiff_t>(req.size()));
  EXPECT_EQ(parse_request_head("GET", 3, lim, r, nullptr, nullptr), kIncomplete);
}

TEST(Parser, CallerCapacityBelowMaxFields) {
  Limits lim;
  std::string req = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n";
  Header hs[1];
  Request r;
  r.headers = hs;
  r.headers_capacity = 1;
  ParseError e;
  EXPECT_EQ(parse_request_head(req.data(), req.size(), lim, r, &e, nullptr), kError);
  EXPECT_EQ(e, ParseError::kTooManyHeaders);
}

// The request reuses one Request across pipelined requests: nothing from the first may leak.
TEST(Parser, RequestIsResetBetweenParses) {
  Limits lim;
  std::string a = "POST /a?x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
  std::string b = "GET /b HTTP/1.0\r\n\r\n";
  Header hs[8];
  Request r;
  r.headers = hs;
  r.headers_capacity = 8;
  ParseError e;
  size_t scan = 0;
  ASSERT_GT(parse_request_head(a.data(), a.size(), lim, r, &e, &scan), 0);
  scan = 0;
  ASSERT_GT(parse_request_head(b.data(), b.size(), lim, r, &e, &scan), 0);
  EXPECT_EQ(r.body, BodyKind::kNone);
  EXPECT_EQ(r.num_headers, 0u);
  EXPECT_FALSE(r.expect_continue);
  EXPECT_FALSE(r.keep_alive);
  EXPECT_TRUE(r.query.empty());
  EXPECT_TRUE(r.host.empty());
  EXPECT_EQ(r.version_minor, 0);
}

TEST(Parser, ErrorStatusTable) {
  EXPECT_EQ(error_status(ParseError::kBodyTooLarge), 413);
  EXPECT_EQ(error_status(ParseError::kRequestLineTooLong), 414);
  EXPECT_EQ(error_status(ParseError::kTooManyHeaders), 431);
  EXPECT_EQ(error_status(ParseError::kHeaderTooLarge), 431);
  EXPECT_EQ(error_status(ParseError::kTrailerTooLarge), 431);
  EXPECT_EQ(error_status(ParseError::kHeadTooLarge), 431);
  EXPECT_EQ(error_status(ParseError::kUnknownTransferEncoding), 501);
  EXPECT_EQ(error_status(ParseError::kUnsupportedVersion), 505);
  for (int i = 0; i <= static_cast<int>(ParseError::kHeadTooLarge); ++i) {
    auto e = static_cast<ParseError>(i);
    EXPECT_NE(error_reason(e), nullptr);
    EXPECT_STRNE(test::error_name(e), "?");
    int s = error_status(e);
    EXPECT_TRUE(s == 400 || s == 413 || s == 414 || s == 431 || s == 501 || s == 505);
  }
  EXPECT_NE(error_reason(static_cast<ParseError>(200)), nullptr);
}

}  // namespace
