// Access-log formats (src/core/http1/access_log.hpp): every atom, the compile errors, escaping in
// text and JSON, cutting of huge values without breaking the line, and no allocation per line.
#include "core/http1/access_log.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "alloc_counter.hpp"

namespace fulmen::http1 {
namespace {

// A request and the record around it, with views into strings the fixture owns.
struct Rec {
  std::vector<Header> headers;
  Request req;
  std::string_view resp[AccessFormat::kMaxResponseHeaders];
  AccessRecord r;

  Rec() {
    req.method = "GET";
    req.method_id = Method::kGet;
    req.target = "/a/b?x=1&y=2";
    req.path = "/a/b";
    req.query = "x=1&y=2";
    req.version_minor = 1;
    r.remote_addr = "192.0.2.7";
    r.remote_port = 51234;
    r.request = &req;
    r.status = 200;
    r.sent = 1234;
    r.duration_us = 1234567;
    r.log_date = "24/Nov/2026:22:30:00 +0000";
    r.iso_date = "2026-11-24T22:30:00+00:00";
    r.pid = 4242;
    r.response_headers = resp;
  }
  void header(std::string_view name, std::string_view value) {
    headers.push_back({name, value});
    req.headers = headers.data();
    req.num_headers = headers.size();
    req.headers_capacity = headers.size();
  }
};

std::string render(const AccessFormat& f, const AccessRecord& r) {
  std::string out(AccessFormat::kMaxLine, '\0');
  out.resize(f.render(r, out.data()));
  return out;
}

std::string render(std::string_view spec, const AccessRecord& r) {
  AccessFormat f;
  std::string err = f.compile(spec);
  EXPECT_EQ(err, "") << spec;
  return render(f, r);
}

// A strict checker for the flat JSON objects the json format produces: string keys; string,
// integer, decimal or null values; escapes limited to RFC 8259's; no raw control characters.
bool valid_json_line(const std::string& s, std::string* why) {
  size_t i = 0;
  auto fail = [&](const char* m) {
    *why = std::string(m) + " at " + std::to_string(i);
    return false;
  };
  auto string = [&]() {
    if (s[i] != '"') return false;
    for (++i; i < s.size(); ++i) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      if (c == '"') {
        ++i;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        ++i;
        if (i >= s.size()) return false;
        if (s[i] == 'u') {
          for (int k = 1; k <= 4; ++k)
            if (i + k >= s.size() || !isxdigit(static_cast<unsigned char>(s[i + k]))) return false;
          i += 4;
        } else if (std::string_view("\"\\/bfnrt").find(s[i]) == std::string_view::npos) {
          return false;
        }
      }
    }
    return false;
  };
  if (s.size() < 3 || s[0] != '{' || s.substr(s.size() - 2) != "}\n") return fail("not {...}\\n");
  i = 1;
  while (true) {
    if (!string()) return fail("bad key");
    if (s[i++] != ':') return fail("no colon");
    if (s[i] == '"') {
      if (!string()) return fail("bad string");
    } else if (s.compare(i, 4, "null") == 0) {
      i += 4;
    } else {
      size_t start = i;
      while (i < s.size() && (isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
      if (i == start) return fail("bad value");
    }
    if (s[i] == ',') {
      ++i;
      continue;
    }
    if (s[i] == '}' && i == s.size() - 2) return true;
    return fail("junk");
  }
}

TEST(AccessLog, DefaultIsGunicornsCombinedFormat) {
  Rec t;
  t.header("Host", "example.com");
  t.header("Referer", "http://example.com/");
  t.header("User-Agent", "curl/8.0");
  AccessFormat f;
  EXPECT_FALSE(f.json());
  EXPECT_FALSE(f.needs_duration());
  EXPECT_EQ(render(f, t.r),
            "192.0.2.7 - - [24/Nov/2026:22:30:00 +0000] \"GET /a/b?x=1&y=2 HTTP/1.1\" 200 1234 "
            "\"http://example.com/\" \"curl/8.0\"\n");
  EXPECT_EQ(render(AccessFormat::kDefault, t.r), render(f, t.r));
}

TEST(AccessLog, EveryAtom) {
  Rec t;
  t.header("Referer", "http://r/");
  t.header("User-Agent", "ua/1");
  t.header("Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l");  // aladdin:opensesame
  t.header("X-Request-Id", "abc-123");
  t.resp[0] = "text/html";
  AccessFormat f;
  ASSERT_EQ(f.compile("%(h)s|%(l)s|%(u)s|%(t)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|"
                      "%(f)s|%(a)s|%(T)s|%(D)s|%(M)s|%(L)s|%(p)s|%({x-request-id}i)s|"
                      "%({Content-Type}o)s"),
            "");
  EXPECT_TRUE(f.needs_duration());
  EXPECT_TRUE(f.needs_pid());
  ASSERT_EQ(f.response_headers(), std::vector<std::string>{"content-type"});
  EXPECT_EQ(render(f, t.r),
            "192.0.2.7|-|aladdin|[24/Nov/2026:22:30:00 +0000]|GET /a/b?x=1&y=2 HTTP/1.1|GET|/a/b|"
            "x=1&y=2|HTTP/1.1|200|1234|1234|http://r/|ua/1|1|1234567|1234|1.234567|<4242>|abc-123|"
            "text/html\n");
}

TEST(AccessLog, DurationsAndSmallNumbers) {
  Rec t;
  t.r.duration_us = 5;
  t.r.sent = 0;
  t.req.version_minor = 0;
  EXPECT_EQ(render("%(T)s %(M)s %(D)s %(L)s %(b)s %(B)s %(H)s", t.r), "0 0 5 0.000005 0 0 HTTP/1.0\n");
  t.r.duration_us = -3;  // a clock step backwards is logged as 0, never as a huge number
  EXPECT_EQ(render("%(D)s %(L)s", t.r), "0 0.000000\n");
  t.r.duration_us = 61000000;
  EXPECT_EQ(render("%(T)s %(M)s %(L)s", t.r), "61 61000 61.000000\n");
}

TEST(AccessLog, MissingValuesAreDashes) {
  Rec t;
  t.req.query = {};
  EXPECT_EQ(render("%(u)s %(f)s %(a)s %({x-missing}i)s %({x-missing}o)s [%(q)s]", t.r),
            "- - - - - []\n");
  t.r.response_headers = nullptr;
  EXPECT_EQ(render("%({etag}o)s", t.r), "-\n");
}

TEST(AccessLog, UnixSocketClient) {
  Rec t;
  t.r.remote_addr = {};
  t.r.remote_port = 0;
  EXPECT_EQ(render("%(h)s %({REMOTE_PORT}e)s", t.r), "unix 0\n");
}

TEST(AccessLog, BasicAuthUser) {
  auto user = [](std::string_view auth) {
    Rec t;
    t.header("Authorization", auth);
    return render("%(u)s", t.r);
  };
  EXPECT_EQ(user("Basic dXNlcjpwYXNz"), "user\n");
  EXPECT_EQ(user("basic   dXNlcjpwYXNz"), "user\n");
  EXPECT_EQ(user("Basic dXNlcg=="), "user\n");   // no colon: all of it
  EXPECT_EQ(user("Basic !!!"), "-\n");           // not base64
  EXPECT_EQ(user("Bearer dXNlcjpwYXNz"), "-\n");
  EXPECT_EQ(user("Basic"), "-\n");
  EXPECT_EQ(user("Basic YSJiXDpwdw=="), "a\\\"b\\\\\n");  // a"b\:pw: escaped in the log
}

TEST(AccessLog, EnvironNamesMapToTheRequest) {
  Rec t;
  t.header("X-Forwarded-For", "10.0.0.1");
  EXPECT_EQ(render("%({REMOTE_ADDR}e)s %({remote_port}e)s %({REQUEST_METHOD}e)s %({PATH_INFO}e)s "
                   "%({QUERY_STRING}e)s %({RAW_URI}e)s %({SERVER_PROTOCOL}e)s %({HTTP_X_FORWARDED_FOR}e)s",
                   t.r),
            "192.0.2.7 51234 GET /a/b x=1&y=2 /a/b?x=1&y=2 HTTP/1.1 10.0.0.1\n");
}

TEST(AccessLog, HeaderNamesAreCaseInsensitiveAndFirstWins) {
  Rec t;
  t.header("x-tag", "one");
  t.header("X-TAG", "two");
  EXPECT_EQ(render("%({X-Tag}i)s %({x-tag}i)d", t.r), "one one\n");
}

TEST(AccessLog, PercentAndLiterals) {
  Rec t;
  EXPECT_EQ(render("100%% %(s)s\tdone", t.r), "100% 200\tdone\n");
  EXPECT_EQ(render("plain text", t.r), "plain text\n");
}

TEST(AccessLog, TextEscapesQuotesBackslashesAndNonPrintables) {
  Rec t;
  t.header("User-Agent", std::string_view("a\"b\\c\x01\x7f\xff\tz", 10));
  EXPECT_EQ(render("\"%(a)s\"", t.r), "\"a\\\"b\\\\c\\x01\\x7f\\xff\\x09z\"\n");
}

TEST(AccessLog, CompileErrors) {
  struct Case {
    std::string_view spec, message_part;
  };
  const Case cases[] = {
      {"", "empty"},
      {"%(x)s", "unknown atom %(x)s"},
      {"%(hh)s", "unknown atom"},
      {"50% off", "lone '%'"},
      {"%", "lone '%'"},
      {"%(h", "not closed"},
      {"%(h)", "must be followed by s"},
      {"%(h)r", "must be followed by s"},
      {"a\nb", "control character"},
      {"%({bad header}i)s", "not a header name"},
      {"%({}i)s", "unknown atom"},
      {"%({wsgi.input}e)s", "REMOTE_ADDR"},
      {"%({SERVER_NAME}e)s", "REMOTE_ADDR"},
      {std::string_view("x\0y", 3), "control character"},
  };
  for (const Case& c : cases) {
    AccessFormat f;
    ASSERT_EQ(f.compile("%(s)s"), "");
    std::string err = f.compile(c.spec);
    EXPECT_NE(err.find(c.message_part), std::string::npos) << "spec: " << c.spec << " error: " << err;
    // A failed compile leaves the previous format in place.
    Rec t;
    EXPECT_EQ(render(f, t.r), "200\n");
  }
  std::string many;
  for (size_t i = 0; i <= AccessFormat::kMaxResponseHeaders; ++i) many += "%({h" + std::to_string(i) + "}o)s ";
  AccessFormat f;
  EXPECT_NE(f.compile(many).find("response headers"), std::string::npos);
  std::string eight;
  for (size_t i = 0; i < AccessFormat::kMaxResponseHeaders; ++i) eight += "%({h" + std::to_string(i) + "}o)s %({H0}o)s ";
  EXPECT_EQ(f.compile(eight), "");  // repeats share a slot
  EXPECT_EQ(f.response_headers().size(), AccessFormat::kMaxResponseHeaders);
  std::string too_long(AccessFormat::kMaxLine / 2 + 1, 'x');
  EXPECT_NE(f.compile(too_long).find("too long"), std::string::npos);
  EXPECT_EQ(f.compile(std::string(AccessFormat::kMaxLine / 2 - 1, 'x')), "");
}

TEST(AccessLog, JsonLine) {
  Rec t;
  t.header("User-Agent", "ua/1");
  AccessFormat f;
  ASSERT_EQ(f.compile("json"), "");
  EXPECT_TRUE(f.json());
  EXPECT_TRUE(f.needs_duration());
  std::string line = render(f, t.r);
  EXPECT_EQ(line,
            "{\"time\":\"2026-11-24T22:30:00+00:00\",\"remote_addr\":\"192.0.2.7\",\"remote_port\":51234,"
            "\"method\":\"GET\",\"path\":\"/a/b\",\"query\":\"x=1&y=2\",\"protocol\":\"HTTP/1.1\","
            "\"status\":200,\"bytes\":1234,\"duration_us\":1234567,\"referer\":null,"
            "\"user_agent\":\"ua/1\",\"user\":null,\"pid\":4242}\n");
  std::string why;
  EXPECT_TRUE(valid_json_line(line, &why)) << why;
}

TEST(AccessLog, JsonEscapesAndReplacesInvalidUtf8) {
  Rec t;
  // Quote, backslash, named escapes, other controls, DEL, valid 2- and 4-byte UTF-8, then a lone
  // continuation byte, an overlong '/', a UTF-16 surrogate, a truncated sequence and 0xff.
  std::string ua = "q\"b\\n\nr\rt\tB\bF\f\x01\x1f\x7f"
                   "\xc3\xa9\xf0\x9f\x98\x80"
                   "\x80|\xc0\xaf|\xed\xa0\x80|\xe2\x82|\xff";
  t.header("User-Agent", ua);
  std::string line = render("json", t.r);
  std::string why;
  EXPECT_TRUE(valid_json_line(line, &why)) << why << "\n" << line;
  EXPECT_NE(line.find("\"user_agent\":\"q\\\"b\\\\n\\nr\\rt\\tB\\bF\\f\\u0001\\u001f\\u007f"
                      "\xc3\xa9\xf0\x9f\x98\x80"
                      "\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|\\ufffd\\ufffd|\\ufffd\""),
            std::string::npos)
      << line;
}

TEST(AccessLog, JsonPathWithInvalidUtf8) {
  Rec t;
  t.req.path = "/caf\xe9";  // Latin-1, as some clients send
  t.req.target = "/caf\xe9";
  std::string line = render("json", t.r);
  EXPECT_NE(line.find("\"path\":\"/caf\\ufffd\""), std::string::npos) << line;
}

TEST(AccessLog, HugeValuesAreCutAndTheLineStaysWhole) {
  Rec t;
  std::string big(100000, 'a');
  t.header("User-Agent", big);
  t.header("Referer", big);
  t.header("X-A", big);
  t.header("X-B", big);
  std::string line = render("%(a)s|%(f)s|%({x-a}i)s|%({x-b}i)s|%(s)s end", t.r);
  EXPECT_LE(line.size(), AccessFormat::kMaxLine);
  ASSERT_GE(line.size(), 9u);
  EXPECT_EQ(line.substr(line.size() - 9), "|200 end\n");  // what comes after the values survives
  // Each value at most kMaxValue; the first two get all of it, the line budget cuts the rest.
  EXPECT_EQ(line.find('|'), AccessFormat::kMaxValue);
  EXPECT_EQ(std::count(line.begin(), line.end(), '|'), 4);
}

TEST(AccessLog, CutsNeverSplitAnEscapeOrACharacter) {
  for (std::string unit : {std::string("\x01"), std::string("\xc3\xa9"), std::string("\xf0\x9f\x98\x80"),
                           std::string("\"")}) {
    for (size_t pad = 0; pad < 6; ++pad) {
      Rec t;
      std::string v(pad, 'p');
      while (v.size() < 3 * AccessFormat::kMaxLine) v += unit;
      t.header("User-Agent", v);
      t.header("Referer", v);
      std::string line = render("json", t.r);
      std::string why;
      EXPECT_TRUE(valid_json_line(line, &why)) << why;
      EXPECT_LE(line.size(), AccessFormat::kMaxLine);
      // The cut lands on a whole unit: no U+FFFD appears (nothing was split into invalid UTF-8).
      EXPECT_EQ(line.find("ufffd"), std::string::npos);
      std::string text = render("\"%(a)s\" \"%(f)s\"", t.r);
      EXPECT_LE(text.size(), AccessFormat::kMaxLine);
      EXPECT_EQ(text.substr(text.size() - 2), "\"\n");
      // A text cut never leaves a dangling backslash or half of \xHH before the closing quote.
      size_t q = text.find("\" \"");
      ASSERT_NE(q, std::string::npos);
      std::string first = text.substr(1, q - 1);
      size_t backslashes = 0;
      for (size_t i = first.size(); i-- > 0 && first[i] == '\\';) ++backslashes;
      EXPECT_EQ(backslashes % 2, 0u);
      size_t x = first.rfind("\\x");
      if (x != std::string::npos) {
        EXPECT_GE(first.size() - x, 4u) << first.substr(x);
      }
    }
  }
}

TEST(AccessLog, RenderDoesNotAllocate) {
  Rec t;
  const std::string agent(5000, 'u');
  t.header("User-Agent", agent);
  t.header("Authorization", "Basic dXNlcjpwYXNz");
  t.resp[0] = "v";
  AccessFormat text, json;
  ASSERT_EQ(text.compile("%(h)s %(u)s %(t)s \"%(r)s\" %(a)s %(L)s %(p)s %({etag}o)s"), "");
  ASSERT_EQ(json.compile("json"), "");
  std::vector<char> buf(AccessFormat::kMaxLine);
  uint64_t before = fulmen::test::g_counted_allocs.load();
  fulmen::test::t_count_allocs = true;
  size_t n1 = text.render(t.r, buf.data());
  size_t n2 = json.render(t.r, buf.data());
  fulmen::test::t_count_allocs = false;
  EXPECT_GT(n1, 0u);
  EXPECT_GT(n2, 0u);
  EXPECT_EQ(fulmen::test::g_counted_allocs.load(), before);
}

}  // namespace
}  // namespace fulmen::http1
