// PROXY protocol parser tests (src/core/http1/proxy_protocol.cpp). Every accepted header is also
// fed one byte at a time: each proper prefix must say "incomplete", never an error or a result,
// and every buffer ends exactly at the end of its allocation (ExactBuffer), so ASan catches a
// read past what arrived.
#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <string>

#include "core/http1/proxy_protocol.hpp"
#include "http1_support.hpp"

using namespace fulmen::http1;
using fulmen::test::ExactBuffer;

namespace {

ptrdiff_t parse(const std::string& s, ProxyHeader* h, size_t n = std::string::npos) {
  n = std::min(n, s.size());
  ExactBuffer b(s.data(), n);
  return parse_proxy_header(b.p, n, h);
}

// Parses `s` whole and at every prefix; returns the whole-input result.
ptrdiff_t parse_all_splits(const std::string& s, ProxyHeader* h) {
  ptrdiff_t whole = parse(s, h);
  ProxyHeader scratch;
  if (whole > 0) {
    for (size_t k = 0; k < size_t(whole); ++k)
      EXPECT_EQ(parse(s, &scratch, k), kProxyIncomplete) << "prefix " << k << " of " << s.size();
  }
  return parse(s, h);
}

std::string ip4(const ProxyHeader& h, bool src = true) {
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, src ? h.src : h.dst, buf, sizeof buf);
  return buf;
}
std::string ip6(const ProxyHeader& h) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, h.src, buf, sizeof buf);
  return buf;
}

TEST(ProxyV1, Tcp4) {
  ProxyHeader h;
  std::string s = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
  ASSERT_EQ(parse_all_splits(s, &h), ptrdiff_t(s.find("GET")));
  EXPECT_EQ(h.version, 1);
  EXPECT_TRUE(h.has_address);
  EXPECT_FALSE(h.v6);
  EXPECT_EQ(ip4(h), "192.168.0.1");
  EXPECT_EQ(ip4(h, false), "192.168.0.11");
  EXPECT_EQ(h.src_port, 56324);
  EXPECT_EQ(h.dst_port, 443);
}

TEST(ProxyV1, Tcp6AndUnknown) {
  ProxyHeader h;
  std::string s = "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
  ASSERT_EQ(parse_all_splits(s, &h), ptrdiff_t(s.size()));
  EXPECT_TRUE(h.v6);
  EXPECT_EQ(ip6(h), "2001:db8::1");
  EXPECT_EQ(h.src_port, 65535);
  s = "PROXY UNKNOWN\r\n";
  ASSERT_EQ(parse_all_splits(s, &h), ptrdiff_t(s.size()));
  EXPECT_FALSE(h.has_address);
  s = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";  // the rest of an UNKNOWN line is ignored
  ASSERT_EQ(parse_all_splits(s, &h), ptrdiff_t(s.size()));
  EXPECT_FALSE(h.has_address);
}

TEST(ProxyV1, LengthLimit) {
  // 107 bytes with CRLF is the spec's maximum: accepted at 107, refused at 108.
  std::string head = "PROXY UNKNOWN ";
  std::string at = head + std::string(107 - head.size() - 2, 'x') + "\r\n";
  ASSERT_EQ(at.size(), kProxyV1MaxLength);
  ProxyHeader h;
  EXPECT_EQ(parse_all_splits(at, &h), ptrdiff_t(kProxyV1MaxLength));
  std::string over = head + std::string(108 - head.size() - 2, 'x') + "\r\n";
  EXPECT_EQ(parse(over, &h), kProxyError);
  // Without a line end yet: incomplete below the limit, an error once the limit is reached.
  EXPECT_EQ(parse(std::string(over, 0, 106), &h), kProxyIncomplete);
  EXPECT_EQ(parse(std::string(over, 0, 107), &h), kProxyError);
}

TEST(ProxyV1, Rejected) {
  ProxyHeader h;
  for (const char* bad : {
           "GET / HTTP/1.1\r\n", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
           "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "PROXY TCP4 ::1 ::1 1 2\r\n",
           "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "PROXY UNKNOWNX\r\n", "PROXY \r\n",
           "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"}) {
    EXPECT_EQ(parse(bad, &h), kProxyError) << bad;
  }
  static const char kNul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
  EXPECT_EQ(parse(std::string(kNul, sizeof kNul - 1), &h), kProxyError);
}

std::string v2(uint8_t ver_cmd, uint8_t fam, const std::string& body) {
  std::string s("\r\n\r\n\0\r\nQUIT\n", 12);
  s += char(ver_cmd);
  s += char(fam);
  s += char(body.size() >> 8);
  s += char(body.size() & 0xff);
  return s + body;
}

std::string v4_block(const char* src, const char* dst, uint16_t sp, uint16_t dp) {
  std::string b(12, '\0');
  inet_pton(AF_INET, src, &b[0]);
  inet_pton(AF_INET, dst, &b[4]);
  b[8] = char(sp >> 8), b[9] = char(sp & 0xff), b[10] = char(dp >> 8), b[11] = char(dp & 0xff);
  return b;
}

TEST(ProxyV2, Tcp4WithTlvs) {
  std::string tlvs = std::string("\x01\x00\x02h2", 5) + std::string("\x04\x00\x00", 3);  // ALPN, NOOP
  std::string s = v2(0x21, 0x11, v4_block("203.0.113.7", "10.0.0.1", 40000, 443) + tlvs) + "GET";
  ProxyHeader h;
  ASSERT_EQ(parse_all_splits(s, &h), ptrdiff_t(s.size() - 3));
  EXPECT_EQ(h.version, 2);
  EXPECT_TRUE(h.has_address);
  EXPECT_EQ(ip4(h), "203.0.113.7");
  EXPECT_EQ(h.src_port, 40000);
  EXPECT_EQ(h.dst_port, 443);
}

TEST(ProxyV2, Tcp6) {
  std::string b(36, '\0');
  inet_pton(AF_INET6, "2001:db8::42", &b[0]);
  inet_pton(AF_INET6, "::1", &b[16]);
  b[32] = char(0x12), b[33] = char(0x34);
  ProxyHeader h;
  std::string s = v2(0x21, 0x21, b);
  ASSERT_EQ(parse_all_splits(s, &h), ptrdiff_t(s.size()));
  EXPECT_TRUE(h.v6);
  EXPECT_EQ(ip6(h), "2001:db8::42");
  EXPECT_EQ(h.src_port, 0x1234);
}

TEST(ProxyV2, LocalUnspecAndUnixKeepThePeer) {
  ProxyHeader h;
  std::string local = v2(0x20, 0x11, v4_block("1.2.3.4", "5.6.7.8", 1, 2));  // LOCAL: health check
  ASSERT_EQ(parse_all_splits(local, &h), ptrdiff_t(local.size()));
  EXPECT_FALSE(h.has_address);
  std::string unspec = v2(0x21, 0x00, std::string(7, 'z'));  // AF_UNSPEC: bytes skipped, not TLVs
  ASSERT_EQ(parse_all_splits(unspec, &h), ptrdiff_t(unspec.size()));
  EXPECT_FALSE(h.has_address);
  std::string empty = v2(0x20, 0x00, "");
  ASSERT_EQ(parse_all_splits(empty, &h), 16);
  std::string unix_ = v2(0x21, 0x31, std::string(216, '\0'));
  ASSERT_EQ(parse_all_splits(unix_, &h), ptrdiff_t(unix_.size()));
  EXPECT_FALSE(h.has_address);
}

TEST(ProxyV2, LengthLimit) {
  ProxyHeader h;
  std::string block = v4_block("1.2.3.4", "5.6.7.8", 1, 2);
  // One TLV that fills the header to exactly kProxyV2MaxLength bytes, then one byte more.
  size_t tlv_len = kProxyV2MaxLength - 16 - 12 - 3;
  std::string tlv = std::string("\xEE", 1) + char(tlv_len >> 8) + char(tlv_len & 0xff) + std::string(tlv_len, 'v');
  std::string at = v2(0x21, 0x11, block + tlv);
  ASSERT_EQ(at.size(), kProxyV2MaxLength);
  EXPECT_EQ(parse(at, &h), ptrdiff_t(kProxyV2MaxLength));
  tlv_len += 1;
  tlv = std::string("\xEE", 1) + char(tlv_len >> 8) + char(tlv_len & 0xff) + std::string(tlv_len, 'v');
  std::string over = v2(0x21, 0x11, block + tlv);
  EXPECT_EQ(parse(over, &h), kProxyError);
  EXPECT_EQ(parse(over, &h, 16), kProxyError);  // refused from the length field alone
}

TEST(ProxyV2, Rejected) {
  ProxyHeader h;
  std::string block = v4_block("1.2.3.4", "5.6.7.8", 1, 2);
  EXPECT_EQ(parse(v2(0x11, 0x11, block), &h), kProxyError);  // version 1 in a v2 header
  EXPECT_EQ(parse(v2(0x31, 0x11, block), &h), kProxyError);  // version 3
  EXPECT_EQ(parse(v2(0x22, 0x11, block), &h), kProxyError);  // command 2
  EXPECT_EQ(parse(v2(0x21, 0x41, block), &h), kProxyError);  // family 4
  EXPECT_EQ(parse(v2(0x21, 0x13, block), &h), kProxyError);  // transport 3
  EXPECT_EQ(parse(v2(0x21, 0x12, block), &h), kProxyError);  // UDP on a stream connection
  EXPECT_EQ(parse(v2(0x21, 0x11, block.substr(0, 11)), &h), kProxyError);  // too short for TCP4
  EXPECT_EQ(parse(v2(0x21, 0x21, std::string(35, '\0')), &h), kProxyError);  // too short for TCP6
  EXPECT_EQ(parse(v2(0x21, 0x11, block + "\x01\x00"), &h), kProxyError);      // truncated TLV head
  EXPECT_EQ(parse(v2(0x21, 0x11, block + std::string("\x01\x00\x05xy", 5)), &h), kProxyError);  // TLV too long
  std::string sig = v2(0x21, 0x11, block);
  sig[11] = 'X';
  EXPECT_EQ(parse(sig, &h), kProxyError);
  EXPECT_EQ(parse(sig, &h, 11), kProxyIncomplete);  // not yet known to be wrong
  EXPECT_EQ(parse(sig, &h, 12), kProxyError);
}

TEST(ProxyAny, EmptyIsIncomplete) {
  ProxyHeader h;
  EXPECT_EQ(parse("", &h), kProxyIncomplete);
  EXPECT_EQ(parse("PRO", &h), kProxyIncomplete);
  EXPECT_EQ(parse("PRX", &h), kProxyError);
  EXPECT_EQ(parse(std::string("\r\n\r\n\0", 5), &h), kProxyIncomplete);
}

}  // namespace
