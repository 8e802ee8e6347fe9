// Base64 (RFC 4648 section 4, standard alphabet, padded) for the WebSocket handshake: the
// Sec-WebSocket-Key check and the Sec-WebSocket-Accept value. Small and strict on purpose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fulmen::ws {

constexpr size_t base64_encoded_size(size_t n) noexcept {
  return (n + 2) / 3 * 4;
}

// Writes base64_encoded_size(n) characters to out; returns that count.
size_t base64_encode(const uint8_t* in, size_t n, char* out) noexcept;

// Decodes canonical base64 only: length a multiple of 4, alphabet characters, '=' only as the
// last one or two characters, and the bits the padding leaves over all zero (RFC 4648 3.5), so
// each byte string has exactly one accepted encoding. Returns the decoded length, or -1 if the
// input is not canonical base64 or decodes to more than `cap` bytes.
ptrdiff_t base64_decode(std::string_view in, uint8_t* out, size_t cap) noexcept;

}  // namespace fulmen::ws
