// ASCII helpers shared by the parser and the response writer: case-insensitive compares against
// lower-case literals, token checks, and fast unsigned formatting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fulmen::base {

constexpr char ascii_lower(char c) noexcept { return (c >= 'A' && c <= 'Z') ? char(c | 0x20) : c; }

// `lower` must already be lower case.
constexpr bool iequals(std::string_view s, std::string_view lower) noexcept {
  if (s.size() != lower.size()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (ascii_lower(s[i]) != lower[i]) return false;
  return true;
}

// True if the comma-separated list `s` contains token `lower` (case-insensitive, OWS trimmed).
constexpr bool list_has_token(std::string_view s, std::string_view lower) noexcept {
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string_view::npos) j = s.size();
    std::string_view item = s.substr(i, j - i);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (iequals(item, lower)) return true;
    i = j + 1;
  }
  return false;
}

// RFC 9110 tchar.
constexpr bool is_tchar(unsigned char c) noexcept {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

constexpr bool is_token(std::string_view s) noexcept {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

// Writes v in decimal to out (>= 20 bytes); returns the length.
inline size_t format_u64(uint64_t v, char* out) noexcept {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = char('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
  return n;
}

// Writes v in lower-case hex to out (>= 16 bytes); returns the length.
inline size_t format_hex(uint64_t v, char* out) noexcept {
  static constexpr char kDigits[] = "0123456789abcdef";
  char tmp[16];
  size_t n = 0;
  do {
    tmp[n++] = kDigits[v & 15];
    v >>= 4;
  } while (v);
  for (size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
  return n;
}

// Parses 1*DIGIT without overflow; false on anything else.
constexpr bool parse_u64(std::string_view s, uint64_t* out) noexcept {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  *out = v;
  return true;
}

constexpr int hex_value(char x) noexcept {
  if (x >= '0' && x <= '9') return x - '0';
  if (x >= 'a' && x <= 'f') return x - 'a' + 10;
  if (x >= 'A' && x <= 'F') return x - 'A' + 10;
  return -1;
}

// Appends `raw` to `out` with every valid %XX escape decoded; a '%' not followed by two hex
// digits is kept as it is (the lenient reading WSGI and ASGI servers share).
inline void append_percent_decoded(std::string_view raw, std::string& out) {
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == '%' && i + 2 < raw.size()) {
      int hi = hex_value(raw[i + 1]), lo = hex_value(raw[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(char(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(c);
  }
}

}  // namespace fulmen::base
