// PROXY protocol v1 and v2 (HAProxy, doc/proxy-protocol.txt): the header a load balancer sends
// before the first HTTP byte to say who the client is (--proxy-protocol).
//
// Bytes in, a result out, picohttpparser style: parse_proxy_header() returns the number of bytes
// the header used (> 0), kProxyIncomplete while more bytes are needed (the header may arrive in
// pieces), or kProxyError. Strict: a v1 header is exactly "PROXY" SP family SP src SP dst SP sport
// SP dport CRLF within 107 bytes; a v2 header has the 12-byte signature, version 2, a known
// command and family, an address block that fits its length, and well-formed TLVs (which are
// skipped). It allocates nothing and knows nothing of sockets.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fulmen::http1 {

inline constexpr ptrdiff_t kProxyIncomplete = -2;
inline constexpr ptrdiff_t kProxyError = -1;
inline constexpr size_t kProxyV1MaxLength = 107;   // the spec's bound, CRLF included
inline constexpr size_t kProxyV2MaxLength = 4096;  // ours: 16-byte head + addresses + TLVs

struct ProxyHeader {
  int version = 0;            // 1 or 2
  bool has_address = false;   // false: LOCAL, UNKNOWN, AF_UNSPEC or AF_UNIX: keep the real peer
  bool v6 = false;
  uint8_t src[16] = {};       // IPv4 in bytes 0-3
  uint8_t dst[16] = {};
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
};

ptrdiff_t parse_proxy_header(const char* data, size_t len, ProxyHeader* out) noexcept;

}  // namespace fulmen::http1
