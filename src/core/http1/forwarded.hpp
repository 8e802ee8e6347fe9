// Proxy headers: what a trusted reverse proxy says about the original request (--proxy-headers).
//
// Bytes in, views out, as in parser.hpp: read_forwarded() looks at a parsed request's headers
// once per request and returns views into the request head; it allocates nothing. The trust
// decision (is the peer a proxy we believe?) is the caller's, made once per connection with
// TrustList; inside the headers, X-Forwarded-For / Forwarded "for=" hops are walked from the right
// and the right-most one that is not a trusted proxy is the client (Uvicorn 0.30+).
//
// Forwarded (RFC 7239) wins: when a request has one, the X-Forwarded-* headers are not read.
// A malformed header, or a scheme other than http/https/ws/wss, makes read_forwarded() return
// false and nothing at all is applied: a proxy header is either understood whole or ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/http1/parser.hpp"

namespace fulmen::http1 {

// One trusted network: the first `prefix` bits of `addr` (an IPv4 address uses bytes 0-3).
struct IpNet {
  bool v6 = false;
  uint8_t prefix = 0;
  uint8_t addr[16] = {};
};

// "1.2.3.4", "10.0.0.0/8", "::1", "[::1]", "fd00::/8". False if it is none of these.
bool parse_ip_net(std::string_view text, IpNet* out) noexcept;
// An IP address as text ("1.2.3.4", "::1"; no brackets, no port) to bytes. False if it is not one.
bool parse_ip(std::string_view text, bool* v6, uint8_t addr[16]) noexcept;

// --forwarded-allow-ips.
struct TrustList {
  bool all = false;         // "*": every peer; the left-most X-Forwarded-For entry is the client
  bool unix_peers = false;  // "unix": peers on Unix sockets (which have no address to match)
  std::vector<IpNet> nets;
  // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) also matches IPv4 networks.
  bool contains(bool v6, const uint8_t* addr) const noexcept;
  bool contains_text(std::string_view ip) const noexcept;  // false for anything but an IP
};

// What the trusted headers say. Views point into the request head (valid while it is).
struct ForwardedInfo {
  std::string_view client;       // address (IP text without brackets, "unknown" or an
                                 // obfuscated "_id"); empty: not given, keep the peer's
  int client_port = 0;           // 0 when the header gave no port
  std::string_view scheme;       // "http" or "https" (static strings); empty: not given
  std::string_view host;         // the Host the client used ("name[:port]"); empty: not given
  std::string_view server_name;  // host without its port
  int server_port = -1;          // from the host or X-Forwarded-Port; -1: not given
  bool any() const noexcept { return !client.empty() || !scheme.empty() || !host.empty() || server_port >= 0; }
};

// Most hops a Forwarded / X-Forwarded-For list may have; longer lists are malformed.
inline constexpr size_t kMaxForwardedHops = 64;

bool read_forwarded(const Request& req, const TrustList& trust, ForwardedInfo* out) noexcept;

}  // namespace fulmen::http1
