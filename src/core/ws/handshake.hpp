// The server side of the WebSocket opening handshake (RFC 6455 4.2.1, 4.2.2): checking an
// upgrade request's headers, computing Sec-WebSocket-Accept, and splitting the offered
// subprotocols and extensions (RFC 6455 9.1, RFC 7692 5) into views for negotiation.
//
// Works on headers the HTTP/1 parser already split: every view in Handshake points into the
// caller's read buffer, like the parser's own. Fixed-size arrays, no allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/http1/parser.hpp"

namespace fulmen::ws {

// Stable numbers: never renumber, only append.
enum class HandshakeError : uint8_t {
  kNone = 0,
  kNotGet = 1,               // method other than GET (Request overload only)
  kBadHttpVersion = 2,       // HTTP/1.0 (Request overload only)
  kNoUpgradeWebSocket = 3,   // Upgrade lacks the token "websocket"
  kNoConnectionUpgrade = 4,  // Connection lacks the token "upgrade"
  kBadVersion = 5,           // Sec-WebSocket-Version missing or not 13 -> 426
  kMissingKey = 6,           // no Sec-WebSocket-Key
  kBadKey = 7,               // not base64 of 16 bytes, or sent more than once
  kBadProtocols = 8,         // a Sec-WebSocket-Protocol element that is not a token
  kTooManyProtocols = 9,     // more than kMaxSubprotocols offered
  kBadExtensions = 10,       // Sec-WebSocket-Extensions not per RFC 6455 9.1
  kTooManyExtensions = 11,   // more than kMaxExtensionOffers offers or kMaxExtensionParams params
};

// 426 for kBadVersion (answered with "Sec-WebSocket-Version: 13", RFC 6455 4.4), 400 otherwise.
int error_status(HandshakeError e) noexcept;
// A short, stable, human-readable reason. Never null.
const char* error_reason(HandshakeError e) noexcept;

// The header a 426 answer carries, and the one version this server speaks.
inline constexpr std::string_view kSupportedVersion = "13";

// Limits on what one request may offer; beyond them the request is refused (400). Browsers offer
// one extension with one or two parameters and a handful of subprotocols.
inline constexpr size_t kMaxSubprotocols = 32;
inline constexpr size_t kMaxExtensionOffers = 16;
inline constexpr size_t kMaxExtensionParams = 32;  // all offers together

struct ExtensionParam {
  std::string_view name;   // e.g. "client_max_window_bits"; a token
  std::string_view value;  // empty when there is no "=value"; without the quotes if quoted
  bool has_value = false;
  bool escaped = false;  // value was a quoted-string with a quoted-pair: unescape before use
};

// One offer: "permessage-deflate; client_max_window_bits" is name "permessage-deflate" and
// params[first_param .. first_param + num_params).
struct ExtensionOffer {
  std::string_view name;
  uint8_t first_param = 0;
  uint8_t num_params = 0;
};

struct Handshake {
  std::string_view key;  // Sec-WebSocket-Key, validated: 24 characters of base64
  // Sec-WebSocket-Protocol elements in the order offered (all such fields together).
  std::string_view protocols[kMaxSubprotocols];
  size_t num_protocols = 0;
  // Sec-WebSocket-Extensions offers in the order offered (all such fields together).
  ExtensionOffer extensions[kMaxExtensionOffers];
  size_t num_extensions = 0;
  ExtensionParam params[kMaxExtensionParams];
  size_t num_params = 0;
};

// Checks the WebSocket headers of an upgrade request and fills `out`. Checks run in a fixed
// order so the answer does not depend on header order: Upgrade, Connection, version, key,
// subprotocols, extensions. Header names are matched case-insensitively; values are taken as the
// HTTP/1 parser left them (OWS trimmed).
HandshakeError parse_upgrade(const http1::Header* headers, size_t num_headers,
                             Handshake& out) noexcept;

// The same, first checking that the request is a GET in HTTP/1.1 (RFC 6455 4.2.1 item 1).
HandshakeError parse_upgrade(const http1::Request& request, Handshake& out) noexcept;

// Sec-WebSocket-Accept: base64(SHA-1(key + the RFC 6455 GUID)), always 28 characters.
inline constexpr size_t kAcceptSize = 28;
struct AcceptValue {
  char bytes[kAcceptSize];
  std::string_view view() const noexcept { return {bytes, kAcceptSize}; }
};
AcceptValue compute_accept(std::string_view key) noexcept;

}  // namespace fulmen::ws
