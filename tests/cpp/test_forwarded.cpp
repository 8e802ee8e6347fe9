// Proxy-header tests (src/core/http1/forwarded.cpp): trust lists, X-Forwarded-*, RFC 7239
// Forwarded. Each case is a table row: headers in, what the app must see out (or "ignored").
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "core/http1/forwarded.hpp"

using namespace fulmen::http1;

namespace {

TrustList trust(std::initializer_list<const char*> items) {
  TrustList t;
  for (const char* s : items) {
    std::string_view v(s);
    if (v == "*") {
      t.all = true;
      continue;
    }
    IpNet n;
    EXPECT_TRUE(parse_ip_net(v, &n)) << s;
    t.nets.push_back(n);
  }
  return t;
}

struct Result {
  bool ok = false;
  std::string client, scheme, host, server_name;
  int client_port = 0, server_port = -1;
  bool any_set() const { return !client.empty() || !scheme.empty() || !host.empty() || server_port >= 0; }
};

// Every X-Forwarded-* header (the tests below that are not about the choice of headers).
constexpr unsigned kAllX = kXForwardedFor | kXForwardedProto | kXForwardedHost | kXForwardedPort;
constexpr unsigned kRfc = kForwardedRfc7239;

Result run(const std::vector<std::pair<std::string, std::string>>& hs, const TrustList& t,
           unsigned which = kAllX) {
  std::vector<Header> headers;
  for (auto& [n, v] : hs) headers.push_back({n, v});
  Request r;
  r.headers = headers.data();
  r.num_headers = headers.size();
  r.headers_capacity = headers.size();
  ForwardedInfo f;
  Result out;
  out.ok = read_forwarded(r, t, which, &f);
  out.client = f.client;
  out.client_port = f.client_port;
  out.scheme = f.scheme;
  out.host = f.host;
  out.server_name = f.server_name;
  out.server_port = f.server_port;
  return out;
}

TEST(TrustList, NetworksAndAddresses) {
  TrustList t = trust({"10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"});
  EXPECT_TRUE(t.contains_text("10.255.0.1"));
  EXPECT_FALSE(t.contains_text("11.0.0.1"));
  EXPECT_TRUE(t.contains_text("192.168.1.7"));
  EXPECT_FALSE(t.contains_text("192.168.1.8"));
  EXPECT_TRUE(t.contains_text("fd12::1"));
  EXPECT_FALSE(t.contains_text("fe80::1"));
  EXPECT_TRUE(t.contains_text("::1"));
  EXPECT_TRUE(t.contains_text("::ffff:10.1.2.3"));  // IPv4-mapped matches the IPv4 network
  EXPECT_FALSE(t.contains_text("unknown"));
  EXPECT_FALSE(t.contains_text("_hidden"));
  EXPECT_FALSE(t.contains_text(""));
  EXPECT_TRUE(trust({"*"}).contains_text("8.8.8.8"));
}

TEST(TrustList, PrefixBoundaries) {
  TrustList t = trust({"172.16.0.0/12", "2001:db8::/33"});
  EXPECT_TRUE(t.contains_text("172.31.255.255"));
  EXPECT_FALSE(t.contains_text("172.32.0.0"));
  EXPECT_FALSE(t.contains_text("172.15.255.255"));
  EXPECT_TRUE(t.contains_text("2001:db8:7fff::1"));
  EXPECT_FALSE(t.contains_text("2001:db8:8000::1"));
  TrustList any4 = trust({"0.0.0.0/0"});
  EXPECT_TRUE(any4.contains_text("1.2.3.4"));
  EXPECT_FALSE(any4.contains_text("::2"));
}

TEST(ParseIpNet, GoodAndBad) {
  IpNet n;
  for (const char* good : {"1.2.3.4", "1.2.3.4/32", "0.0.0.0/0", "::1", "[::1]", "::/0", "fe80::/10",
                           "10.0.0.0/8"})
    EXPECT_TRUE(parse_ip_net(good, &n)) << good;
  for (const char* bad : {"", "1.2.3", "1.2.3.4/33", "::1/129", "1.2.3.4/", "1.2.3.4/x", "host.example",
                          "1.2.3.4/0008", "256.1.1.1", "[1.2.3.4"})
    EXPECT_FALSE(parse_ip_net(bad, &n)) << bad;
}

const TrustList kLocal = trust({"127.0.0.1"});
const TrustList kProxies = trust({"127.0.0.1", "10.0.0.0/8"});

TEST(XForwarded, RightMostUntrustedHopIsTheClient) {
  auto r = run({{"X-Forwarded-For", "1.1.1.1, 2.2.2.2, 10.0.0.5"}}, kProxies);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.client, "2.2.2.2");  // 1.1.1.1 may be spoofed by 2.2.2.2
  EXPECT_EQ(r.client_port, 0);
  EXPECT_EQ(run({{"X-Forwarded-For", "1.1.1.1"}}, kLocal).client, "1.1.1.1");
  // Every hop trusted: the left-most one.
  EXPECT_EQ(run({{"X-Forwarded-For", "10.0.0.1, 10.0.0.2"}}, kProxies).client, "10.0.0.1");
  // "*": the left-most, as Uvicorn does.
  EXPECT_EQ(run({{"X-Forwarded-For", "1.1.1.1, 2.2.2.2"}}, trust({"*"})).client, "1.1.1.1");
}

TEST(XForwarded, SeveralLinesAreOneList) {
  auto r = run({{"X-Forwarded-For", "1.1.1.1"}, {"Host", "h"}, {"x-forwarded-for", "3.3.3.3, 10.0.0.1"}}, kProxies);
  EXPECT_EQ(r.client, "3.3.3.3");
  EXPECT_EQ(run({{"X-Forwarded-For", "1.1.1.1,,  ,3.3.3.3"}}, kLocal).client, "3.3.3.3");
}

TEST(XForwarded, HopForms) {
  auto r = run({{"X-Forwarded-For", "[2001:db8::1]:4711"}}, kLocal);
  EXPECT_EQ(r.client, "2001:db8::1");
  EXPECT_EQ(r.client_port, 4711);
  EXPECT_EQ(run({{"X-Forwarded-For", "2001:db8::2"}}, kLocal).client, "2001:db8::2");
  EXPECT_EQ(run({{"X-Forwarded-For", "[2001:db8::3]"}}, kLocal).client, "2001:db8::3");
  r = run({{"X-Forwarded-For", "203.0.113.9:80"}}, kLocal);
  EXPECT_EQ(r.client, "203.0.113.9");
  EXPECT_EQ(r.client_port, 80);
}

TEST(XForwarded, MalformedTrustedPartIsAnError) {
  // The right-most hop was written by the trusted peer: if it does not parse, the request is
  // refused (400), never served as from the peer (the proxy's own address).
  for (const char* bad : {"not-an-ip", "1.2.3.4:99999", "1.2.3.4:", "[::1", "[1.2.3.4]", "::1:80x",
                          "1.2.3.4, evil", "\"1.2.3.4\"", "1.2.3.4 5.6.7.8"}) {
    auto r = run({{"X-Forwarded-For", bad}, {"X-Forwarded-Proto", "https"}}, kLocal);
    EXPECT_FALSE(r.ok) << bad;
    EXPECT_EQ(r.client, "") << bad;
    EXPECT_EQ(r.scheme, "") << bad;
  }
  // A trusted proxy vouches for the hop on its left: that one must parse too.
  EXPECT_FALSE(run({{"X-Forwarded-For", "evil, 10.0.0.5"}}, kProxies).ok);
}

TEST(XForwarded, LeftOfTheClientIsNeverParsed) {
  // nginx appends the peer to what the client sent: the client's part cannot matter.
  for (const char* left : {"foo", "\"x\"", "1.2.3.4:99999", "[::1", "unknown", "a b c", "127.0.0.1"}) {
    auto r = run({{"X-Forwarded-For", std::string(left) + ", 203.0.113.9"}, {"X-Forwarded-Proto", "https"}},
                 kLocal);
    EXPECT_TRUE(r.ok) << left;
    EXPECT_EQ(r.client, "203.0.113.9") << left;
    EXPECT_EQ(r.scheme, "https") << left;
  }
  auto r = run({{"X-Forwarded-For", "garbage, 2.2.2.2, 10.0.0.5"}}, kProxies);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "2.2.2.2");
}

TEST(XForwarded, OneBadHeaderDoesNotDropTheOthers) {
  auto r = run({{"X-Forwarded-For", "1.2.3.4"}, {"X-Forwarded-Proto", "gopher"}, {"X-Forwarded-Host", "h.example"}},
               kLocal);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "1.2.3.4");
  EXPECT_EQ(r.scheme, "");  // ignored alone
  EXPECT_EQ(r.host, "h.example");
  r = run({{"X-Forwarded-For", "1.2.3.4"}, {"X-Forwarded-Proto", "https"}, {"X-Forwarded-Host", "a/b"},
           {"X-Forwarded-Port", "0x50"}},
          kLocal);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "1.2.3.4");
  EXPECT_EQ(r.scheme, "https");
  EXPECT_EQ(r.host, "");
  EXPECT_EQ(r.server_port, -1);
}

TEST(XForwarded, TooManyHops) {
  // Only the trusted part is walked: a long client-written prefix is fine.
  std::string list;
  for (size_t i = 0; i < 200; ++i) list += (i ? ", 1.1.1." : "1.1.1.") + std::to_string(i % 250);
  list += ", 2.2.2.2";
  auto r = run({{"X-Forwarded-For", list}}, kLocal);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "2.2.2.2");
  // Trusted hops only: the left-most, if it is within kMaxForwardedHops of the right.
  list.clear();
  for (size_t i = 0; i < kMaxForwardedHops; ++i) list += i ? ", 127.0.0.1" : "127.0.0.1";
  EXPECT_TRUE(run({{"X-Forwarded-For", list}}, kLocal).ok);
  list += ", 127.0.0.1";
  EXPECT_FALSE(run({{"X-Forwarded-For", list}}, kLocal).ok);
}

TEST(XForwarded, OnlyTheChosenHeadersAreRead) {
  std::vector<std::pair<std::string, std::string>> hs = {
      {"X-Forwarded-For", "1.1.1.1"}, {"X-Forwarded-Proto", "https"}, {"X-Forwarded-Host", "evil.example"},
      {"X-Forwarded-Port", "8443"}, {"Forwarded", "for=6.6.6.6;proto=http;host=evil.com"}};
  auto r = run(hs, kLocal, kDefaultForwardedHeaders);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "1.1.1.1");
  EXPECT_EQ(r.scheme, "https");
  EXPECT_EQ(r.host, "");  // X-Forwarded-Host and Forwarded are not believed by default
  EXPECT_EQ(r.server_port, -1);
  r = run(hs, kLocal, kXForwardedProto);
  EXPECT_EQ(r.client, "");
  EXPECT_EQ(r.scheme, "https");
  r = run(hs, kLocal, kXForwardedFor | kXForwardedPort);
  EXPECT_EQ(r.scheme, "");
  EXPECT_EQ(r.server_port, 8443);
  r = run(hs, kLocal, kXForwardedHost);
  EXPECT_EQ(r.host, "evil.example");
  // Forwarded chosen: X-Forwarded-* are not read.
  r = run(hs, kLocal, kRfc);
  EXPECT_EQ(r.client, "6.6.6.6");
  EXPECT_EQ(r.host, "evil.com");
  // Default headers and a malformed Forwarded: not read, so no error.
  EXPECT_TRUE(run({{"Forwarded", "garbage"}, {"X-Forwarded-For", "1.1.1.1"}}, kLocal, kDefaultForwardedHeaders).ok);
  unsigned bit = 0;
  EXPECT_TRUE(parse_forwarded_header_name("X-Forwarded-Host", &bit));
  EXPECT_EQ(bit, kXForwardedHost);
  EXPECT_TRUE(parse_forwarded_header_name("forwarded", &bit));
  EXPECT_EQ(bit, kRfc);
  EXPECT_FALSE(parse_forwarded_header_name("x-real-ip", &bit));
}

TEST(XForwarded, ProtoHostPort) {
  auto r = run({{"X-Forwarded-For", "1.1.1.1"}, {"X-Forwarded-Proto", "HTTPS"}, {"X-Forwarded-Host", "example.com"}},
               kLocal);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.scheme, "https");
  EXPECT_EQ(r.host, "example.com");
  EXPECT_EQ(r.server_name, "example.com");
  EXPECT_EQ(r.server_port, 443);  // the scheme's default
  r = run({{"X-Forwarded-Proto", "http"}, {"X-Forwarded-Host", "example.com"}}, kLocal);
  EXPECT_EQ(r.server_port, 80);
  r = run({{"X-Forwarded-Host", "example.com:8443"}, {"X-Forwarded-Port", "9999"}}, kLocal);
  EXPECT_EQ(r.server_name, "example.com");
  EXPECT_EQ(r.server_port, 8443);  // the Host's own port wins
  r = run({{"X-Forwarded-Port", "8080"}}, kLocal);
  EXPECT_EQ(r.server_port, 8080);
  EXPECT_EQ(r.host, "");
  r = run({{"X-Forwarded-Host", "[2001:db8::9]:444"}}, kLocal);
  EXPECT_EQ(r.server_name, "[2001:db8::9]");
  EXPECT_EQ(r.server_port, 444);
  EXPECT_EQ(run({{"X-Forwarded-Proto", "wss"}}, kLocal).scheme, "https");
  EXPECT_EQ(run({{"X-Forwarded-Proto", "ws"}}, kLocal).scheme, "http");
  for (auto bad : {std::pair<const char*, const char*>{"X-Forwarded-Host", "exa mple.com"},
                   {"X-Forwarded-Host", "example.com:"}, {"X-Forwarded-Host", "[::1"},
                   {"X-Forwarded-Host", "a/b"}, {"X-Forwarded-Host", "a%zz"}, {"X-Forwarded-Port", "0x50"},
                   {"X-Forwarded-Port", "65536"}, {"X-Forwarded-Proto", "ftp"}}) {
    r = run({{bad.first, bad.second}}, kLocal);
    EXPECT_TRUE(r.ok) << bad.first << ": " << bad.second;  // ignored alone
    EXPECT_FALSE(r.any_set()) << bad.first << ": " << bad.second;
  }
}

TEST(XForwarded, ListsAlignWithTheChosenHop) {
  // Appended hop by hop: the proto the trusted proxy next to the client saw.
  auto r = run({{"X-Forwarded-For", "1.1.1.1, 10.0.0.1"}, {"X-Forwarded-Proto", "https, http"}}, kProxies);
  EXPECT_EQ(r.client, "1.1.1.1");
  EXPECT_EQ(r.scheme, "https");
  // Lengths differ: the right-most value, written by the proxy next to us.
  r = run({{"X-Forwarded-For", "1.1.1.1, 10.0.0.1"}, {"X-Forwarded-Proto", "https, http, http"}}, kProxies);
  EXPECT_EQ(r.scheme, "http");
}

TEST(XForwarded, NothingGiven) {
  auto r = run({{"Host", "x"}}, kLocal);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "");
  EXPECT_EQ(r.server_port, -1);
}

TEST(Forwarded, Basics) {
  auto r = run({{"Forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43"}}, kLocal, kRfc);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.client, "192.0.2.60");
  EXPECT_EQ(r.scheme, "https");
  r = run({{"Forwarded", "For=\"[2001:db8:cafe::17]:4711\""}}, kLocal, kRfc);
  EXPECT_EQ(r.client, "2001:db8:cafe::17");
  EXPECT_EQ(r.client_port, 4711);
  r = run({{"Forwarded", "for=\"192.0.2.43:47011\";host=\"example.com:8080\""}}, kLocal, kRfc);
  EXPECT_EQ(r.client, "192.0.2.43");
  EXPECT_EQ(r.client_port, 47011);
  EXPECT_EQ(r.host, "example.com:8080");
  EXPECT_EQ(r.server_name, "example.com");
  EXPECT_EQ(r.server_port, 8080);
  r = run({{"Forwarded", "for = 1.2.3.4"}}, kLocal, kRfc);
  EXPECT_FALSE(r.ok);  // no whitespace around "="
  r = run({{"Forwarded", "for=192.0.2.43 ;  proto=http"}}, kLocal, kRfc);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.scheme, "http");
}

TEST(Forwarded, ObfuscatedAndUnknown) {
  auto r = run({{"Forwarded", "for=unknown"}}, kLocal, kRfc);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "unknown");
  r = run({{"Forwarded", "for=_hidden, for=\"_SEVKISEK:_port\""}}, kLocal, kRfc);
  EXPECT_EQ(r.client, "_SEVKISEK");  // right-most untrusted
  EXPECT_EQ(r.client_port, 0);
  EXPECT_FALSE(run({{"Forwarded", "for=_"}}, kLocal, kRfc).ok);
  EXPECT_FALSE(run({{"Forwarded", "for=\"_a:b\""}}, kLocal, kRfc).ok);
  EXPECT_FALSE(run({{"Forwarded", "for=\"_a$\""}}, kLocal, kRfc).ok);
}

TEST(Forwarded, ChainAndTrust) {
  auto r = run({{"Forwarded", "for=1.1.1.1;proto=http, for=2.2.2.2;proto=https;host=h.example, for=10.0.0.3"}},
               kProxies, kRfc);
  EXPECT_EQ(r.client, "2.2.2.2");
  EXPECT_EQ(r.scheme, "https");  // from the element of the chosen hop
  EXPECT_EQ(r.host, "h.example");
  r = run({{"Forwarded", "for=1.1.1.1;proto=http, for=2.2.2.2;proto=https"}}, trust({"*"}), kRfc);
  EXPECT_EQ(r.client, "1.1.1.1");
  EXPECT_EQ(r.scheme, "http");
  // Quoted commas and semicolons do not split.
  r = run({{"Forwarded", "ext=\"a,b;c\";for=1.1.1.1"}}, kLocal, kRfc);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "1.1.1.1");
}

TEST(Forwarded, WhenChosenXForwardedIsNotRead) {
  auto r = run({{"X-Forwarded-For", "9.9.9.9"}, {"X-Forwarded-Proto", "https"}, {"Forwarded", "for=1.1.1.1"}},
               kLocal, kRfc);
  EXPECT_EQ(r.client, "1.1.1.1");
  EXPECT_EQ(r.scheme, "");
  // No Forwarded at all: nothing (X-Forwarded-For is still not read).
  r = run({{"X-Forwarded-For", "9.9.9.9"}}, kLocal, kRfc);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "");
}

TEST(Forwarded, LeftOfTheClientIsNeverParsed) {
  auto r = run({{"Forwarded", "garbage;;, for=1.1.1.1;proto=https"}}, kLocal, kRfc);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "1.1.1.1");
  EXPECT_EQ(r.scheme, "https");
  r = run({{"Forwarded", "for=bad;x, for=2.2.2.2, for=10.0.0.1"}}, kProxies, kRfc);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.client, "2.2.2.2");
  // Left of a trusted hop: must parse.
  EXPECT_FALSE(run({{"Forwarded", "garbage, for=10.0.0.1"}}, kProxies, kRfc).ok);
}

TEST(Forwarded, Malformed) {
  for (const char* bad : {"for=[::1]",               // unquoted ':' and '[' are not token characters
                          "for=\"[::1]", "for=\"::1\"", "for=\"[1.2.3.4]\"", "for=1.2.3.4;for=5.6.7.8",
                          "for=1.2.3.4;proto=http;proto=https", "proto=gopher", "for", "=1.2.3.4",
                          "for=\"a\\\"b\"", "for=\"1.2.3.4:99999\"", "host=\"exa mple\"", "for=host.example",
                          "for=1.2.3.4;", "for=\"[2001:db8::1]x\"", "for=\"1.2.3.4:\"",
                          "proto=https",  // the trusted proxy must say whom it forwarded for
                          "for=1.2.3.4, proto=https;host=h.example"}) {
    auto r = run({{"Forwarded", bad}, {"X-Forwarded-For", "9.9.9.9"}}, kLocal, kRfc);
    EXPECT_FALSE(r.ok) << bad;
    EXPECT_EQ(r.client, "") << bad;
  }
}

}  // namespace
