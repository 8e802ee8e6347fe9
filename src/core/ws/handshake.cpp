// WebSocket opening handshake checks (RFC 6455 4.2.1) and the accept value (4.2.2 item 5.4).
//
// One pass over the headers notes what each WebSocket field says; the verdict is then taken in a
// fixed order, so a request with several faults gets the same answer whatever its header order.
// SHA-1 comes from OpenSSL's libcrypto: a hash is not something to write again.
#include "core/ws/handshake.hpp"

#include <openssl/evp.h>

#include "core/base/ascii.hpp"
#include "core/ws/base64.hpp"

namespace fulmen::ws {

namespace {

constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
constexpr size_t kKeyBytes = 16;  // the nonce a client base64-encodes into Sec-WebSocket-Key

inline bool is_ows(char c) noexcept {
  return c == ' ' || c == '\t';
}

// A cursor over one field value, for the list grammars below.
struct Cursor {
  std::string_view s;
  size_t i = 0;

  bool done() const noexcept { return i == s.size(); }
  char peek() const noexcept { return s[i]; }
  void skip_ows() noexcept {
    while (i < s.size() && is_ows(s[i])) ++i;
  }
  std::string_view token() noexcept {
    const size_t start = i;
    while (i < s.size() && base::is_tchar(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(start, i - start);
  }
  // RFC 9110 5.6.1 list rules: moves to the start of the next non-empty element, past OWS and
  // empty elements (","); false at the end of the list.
  bool next_element() noexcept {
    for (;;) {
      skip_ows();
      if (done()) return false;
      if (peek() != ',') return true;
      ++i;
    }
  }
};

// 1#token with RFC 9110 5.6.1 list rules: OWS around commas, empty elements skipped.
HandshakeError parse_protocols(std::string_view value, Handshake& out) noexcept {
  Cursor c{value};
  while (c.next_element()) {
    std::string_view t = c.token();
    if (t.empty()) return HandshakeError::kBadProtocols;
    c.skip_ows();
    if (!c.done() && c.peek() != ',') return HandshakeError::kBadProtocols;
    if (out.num_protocols == kMaxSubprotocols) return HandshakeError::kTooManyProtocols;
    out.protocols[out.num_protocols++] = t;
  }
  return HandshakeError::kNone;
}

// A quoted-string value whose unescaped content must be a token (RFC 6455 9.1). On success `v`
// is the content between the quotes, as sent.
bool quoted_token(Cursor& c, std::string_view* v, bool* escaped) noexcept {
  ++c.i;  // the opening quote
  const size_t start = c.i;
  size_t chars = 0;
  while (!c.done()) {
    char ch = c.peek();
    if (ch == '"') {
      *v = c.s.substr(start, c.i - start);
      ++c.i;
      return chars > 0;
    }
    if (ch == '\\') {
      *escaped = true;
      if (++c.i == c.s.size()) return false;
      ch = c.peek();
    }
    if (!base::is_tchar(static_cast<unsigned char>(ch))) return false;
    ++chars;
    ++c.i;
  }
  return false;  // no closing quote
}

// extension-list = 1#( token *( ";" param ) ), param = token [ "=" ( token / quoted-string ) ],
// with OWS allowed around ',', ';' and '=' and empty list elements skipped.
HandshakeError parse_extensions(std::string_view value, Handshake& out) noexcept {
  Cursor c{value};
  while (c.next_element()) {
    std::string_view name = c.token();
    if (name.empty()) return HandshakeError::kBadExtensions;
    if (out.num_extensions == kMaxExtensionOffers) return HandshakeError::kTooManyExtensions;
    ExtensionOffer& offer = out.extensions[out.num_extensions++];
    offer.name = name;
    offer.first_param = static_cast<uint8_t>(out.num_params);
    offer.num_params = 0;
    c.skip_ows();
    while (!c.done() && c.peek() == ';') {
      ++c.i;
      c.skip_ows();
      ExtensionParam p;
      p.name = c.token();
      if (p.name.empty()) return HandshakeError::kBadExtensions;
      c.skip_ows();
      if (!c.done() && c.peek() == '=') {
        ++c.i;
        c.skip_ows();
        p.has_value = true;
        if (!c.done() && c.peek() == '"') {
          if (!quoted_token(c, &p.value, &p.escaped)) return HandshakeError::kBadExtensions;
        } else {
          p.value = c.token();
          if (p.value.empty()) return HandshakeError::kBadExtensions;
        }
        c.skip_ows();
      }
      if (out.num_params == kMaxExtensionParams) return HandshakeError::kTooManyExtensions;
      out.params[out.num_params++] = p;
      ++offer.num_params;
    }
    if (!c.done() && c.peek() != ',') return HandshakeError::kBadExtensions;
  }
  return HandshakeError::kNone;
}

bool valid_key(std::string_view key) noexcept {
  uint8_t nonce[kKeyBytes + 3];  // room to see that a longer encoding decodes to more
  return base64_decode(key, nonce, sizeof nonce) == static_cast<ptrdiff_t>(kKeyBytes);
}

}  // namespace

int error_status(HandshakeError e) noexcept {
  return e == HandshakeError::kBadVersion ? 426 : 400;
}

const char* error_reason(HandshakeError e) noexcept {
  switch (e) {
    case HandshakeError::kNone:
      return "no error";
    case HandshakeError::kNotGet:
      return "WebSocket upgrade needs a GET request";
    case HandshakeError::kBadHttpVersion:
      return "WebSocket upgrade needs HTTP/1.1";
    case HandshakeError::kNoUpgradeWebSocket:
      return "Upgrade header lacks \"websocket\"";
    case HandshakeError::kNoConnectionUpgrade:
      return "Connection header lacks \"upgrade\"";
    case HandshakeError::kBadVersion:
      return "unsupported Sec-WebSocket-Version";
    case HandshakeError::kMissingKey:
      return "missing Sec-WebSocket-Key";
    case HandshakeError::kBadKey:
      return "invalid Sec-WebSocket-Key";
    case HandshakeError::kBadProtocols:
      return "invalid Sec-WebSocket-Protocol";
    case HandshakeError::kTooManyProtocols:
      return "too many subprotocols offered";
    case HandshakeError::kBadExtensions:
      return "invalid Sec-WebSocket-Extensions";
    case HandshakeError::kTooManyExtensions:
      return "too many extensions offered";
  }
  return "unknown error";
}

HandshakeError parse_upgrade(const http1::Header* headers, size_t num_headers,
                             Handshake& out) noexcept {
  out.key = {};
  out.num_protocols = 0;
  out.num_extensions = 0;
  out.num_params = 0;

  bool upgrade_websocket = false;
  bool connection_upgrade = false;
  bool version_seen = false;
  bool version_ok = true;  // every Sec-WebSocket-Version field says 13
  size_t keys = 0;
  HandshakeError protocols_error = HandshakeError::kNone;
  HandshakeError extensions_error = HandshakeError::kNone;

  for (size_t k = 0; k < num_headers; ++k) {
    const std::string_view name = headers[k].name;
    const std::string_view value = headers[k].value;
    // Every name we look for is at least 7 bytes; a cheap filter before the compares.
    if (name.size() < 7) continue;
    if (base::iequals(name, "upgrade")) {
      upgrade_websocket = upgrade_websocket || base::list_has_token(value, "websocket");
    } else if (base::iequals(name, "connection")) {
      connection_upgrade = connection_upgrade || base::list_has_token(value, "upgrade");
    } else if (base::iequals(name, "sec-websocket-version")) {
      version_seen = true;
      version_ok = version_ok && value == kSupportedVersion;
    } else if (base::iequals(name, "sec-websocket-key")) {
      ++keys;
      out.key = value;
    } else if (base::iequals(name, "sec-websocket-protocol")) {
      if (protocols_error == HandshakeError::kNone) protocols_error = parse_protocols(value, out);
    } else if (base::iequals(name, "sec-websocket-extensions")) {
      if (extensions_error == HandshakeError::kNone)
        extensions_error = parse_extensions(value, out);
    }
  }

  if (!upgrade_websocket) return HandshakeError::kNoUpgradeWebSocket;
  if (!connection_upgrade) return HandshakeError::kNoConnectionUpgrade;
  if (!version_seen || !version_ok) return HandshakeError::kBadVersion;
  if (keys == 0) return HandshakeError::kMissingKey;
  if (keys > 1 || !valid_key(out.key)) return HandshakeError::kBadKey;
  if (protocols_error != HandshakeError::kNone) return protocols_error;
  if (extensions_error != HandshakeError::kNone) return extensions_error;
  return HandshakeError::kNone;
}

HandshakeError parse_upgrade(const http1::Request& request, Handshake& out) noexcept {
  if (request.method_id != http1::Method::kGet) return HandshakeError::kNotGet;
  if (request.version_minor < 1) return HandshakeError::kBadHttpVersion;
  return parse_upgrade(request.headers, request.num_headers, out);
}

AcceptValue compute_accept(std::string_view key) noexcept {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  // Runs once per connection, so the context allocation EVP needs is not on a hot path.
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha1(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, key.data(), key.size()) == 1 &&
            EVP_DigestUpdate(ctx, kGuid.data(), kGuid.size()) == 1 &&
            EVP_DigestFinal_ex(ctx, digest, &digest_len) == 1 && digest_len == 20;
  EVP_MD_CTX_free(ctx);
  AcceptValue a;
  if (!ok) {
    // Only if libcrypto is broken or out of memory. A value no client accepts fails the
    // handshake on the client side, which is what should happen.
    for (char& ch : a.bytes) ch = '=';
    return a;
  }
  base64_encode(digest, 20, a.bytes);
  return a;
}

}  // namespace fulmen::ws
