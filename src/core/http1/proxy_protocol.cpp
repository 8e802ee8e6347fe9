// PROXY protocol parser (proxy_protocol.hpp).
#include "core/http1/proxy_protocol.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <string_view>

namespace fulmen::http1 {

namespace {

constexpr char kV1Prefix[] = "PROXY ";
constexpr unsigned char kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                            0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

// Decimal 0..65535 without leading zeroes (the spec's ports).
bool v1_port(std::string_view s, uint16_t* out) noexcept {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint32_t(c - '0');
  }
  if (v > 65535) return false;
  *out = uint16_t(v);
  return true;
}

bool v1_addr(std::string_view s, bool v6, uint8_t* out) noexcept {
  char buf[48];
  if (s.empty() || s.size() >= sizeof buf) return false;
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = 0;
  return inet_pton(v6 ? AF_INET6 : AF_INET, buf, out) == 1;
}

ptrdiff_t parse_v1(const char* data, size_t len, ProxyHeader* out) noexcept {
  // The whole line must end in CRLF within 107 bytes; before that, only a prefix check.
  const char* lf = static_cast<const char*>(std::memchr(data, '\n', std::min(len, kProxyV1MaxLength)));
  if (!lf) return len >= kProxyV1MaxLength ? kProxyError : kProxyIncomplete;
  size_t line_len = size_t(lf - data) + 1;
  if (line_len < 8 || data[line_len - 2] != '\r') return kProxyError;
  std::string_view line(data + 6, line_len - 8);  // after "PROXY ", before CRLF
  for (char c : line)
    if (c == '\r' || c == 0) return kProxyError;
  out->version = 1;
  if (line.substr(0, 7) == "UNKNOWN") {
    // "the receiver must ignore anything presented before the CRLF"
    if (line.size() > 7 && line[7] != ' ') return kProxyError;
    return ptrdiff_t(line_len);
  }
  bool v6;
  if (line.substr(0, 5) == "TCP4 ") v6 = false;
  else if (line.substr(0, 5) == "TCP6 ") v6 = true;
  else return kProxyError;
  line.remove_prefix(5);
  std::string_view parts[4];
  for (int i = 0; i < 4; ++i) {
    size_t sp = line.find(' ');
    if (i < 3) {
      if (sp == std::string_view::npos) return kProxyError;
      parts[i] = line.substr(0, sp);
      line.remove_prefix(sp + 1);
    } else {
      if (sp != std::string_view::npos) return kProxyError;
      parts[i] = line;
    }
  }
  if (!v1_addr(parts[0], v6, out->src) || !v1_addr(parts[1], v6, out->dst) ||
      !v1_port(parts[2], &out->src_port) || !v1_port(parts[3], &out->dst_port))
    return kProxyError;
  out->v6 = v6;
  out->has_address = true;
  return ptrdiff_t(line_len);
}

ptrdiff_t parse_v2(const unsigned char* p, size_t len, ProxyHeader* out) noexcept {
  if (len < 16) return kProxyIncomplete;
  uint8_t ver_cmd = p[12], fam = p[13];
  size_t body = (size_t(p[14]) << 8) | p[15];
  if ((ver_cmd >> 4) != 2) return kProxyError;
  int cmd = ver_cmd & 0x0f;
  if (cmd > 1) return kProxyError;  // 0 LOCAL, 1 PROXY
  size_t total = 16 + body;
  if (total > kProxyV2MaxLength) return kProxyError;
  int family = fam >> 4, transport = fam & 0x0f;
  if (family > 3 || transport > 2) return kProxyError;
  size_t addr_len = family == 1 ? 12 : family == 2 ? 36 : family == 3 ? 216 : 0;
  if (body < addr_len) return kProxyError;  // the length cannot hold the addresses it announces
  if (len < total) return kProxyIncomplete;
  out->version = 2;
  if (family != 0) {
    // TLVs after the addresses: type, 16-bit length, value; they must fill the rest exactly.
    size_t pos = 16 + addr_len;
    while (pos < total) {
      if (total - pos < 3) return kProxyError;
      size_t tlv = (size_t(p[pos + 1]) << 8) | p[pos + 2];
      if (tlv > total - pos - 3) return kProxyError;
      pos += 3 + tlv;
    }
  }
  // LOCAL (health checks from the proxy itself), AF_UNSPEC and AF_UNIX: the real peer stays.
  if (cmd == 0 || family == 0 || family == 3) return ptrdiff_t(total);
  if (transport != 1) return kProxyError;  // a datagram or unspecified transport on a stream
  const unsigned char* a = p + 16;
  if (family == 1) {
    std::memcpy(out->src, a, 4);
    std::memcpy(out->dst, a + 4, 4);
    out->src_port = uint16_t((a[8] << 8) | a[9]);
    out->dst_port = uint16_t((a[10] << 8) | a[11]);
  } else {
    std::memcpy(out->src, a, 16);
    std::memcpy(out->dst, a + 16, 16);
    out->src_port = uint16_t((a[32] << 8) | a[33]);
    out->dst_port = uint16_t((a[34] << 8) | a[35]);
    out->v6 = true;
  }
  out->has_address = true;
  return ptrdiff_t(total);
}

}  // namespace

ptrdiff_t parse_proxy_header(const char* data, size_t len, ProxyHeader* out) noexcept {
  *out = ProxyHeader{};
  if (len == 0) return kProxyIncomplete;
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  size_t v1n = std::min(len, sizeof kV1Prefix - 1);
  if (std::memcmp(data, kV1Prefix, v1n) == 0) {
    if (len < sizeof kV1Prefix - 1) return kProxyIncomplete;
    return parse_v1(data, len, out);
  }
  size_t v2n = std::min(len, sizeof kV2Signature);
  if (std::memcmp(p, kV2Signature, v2n) == 0) return parse_v2(p, len, out);
  return kProxyError;
}

}  // namespace fulmen::http1
