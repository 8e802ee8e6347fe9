// Access-log lines: a format (Gunicorn's atoms, or a fixed JSON object) compiled once at start into
// a list of atoms, and a renderer that writes one finished request as one line into a fixed-size
// buffer. Rendering allocates nothing, knows nothing of sockets or Python, and always produces a
// whole line: values that do not fit are cut (never the line's structure, so JSON stays valid).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/http1/parser.hpp"

namespace fulmen::http1 {

// What the renderer needs from one finished exchange; everything is borrowed.
struct AccessRecord {
  std::string_view remote_addr;  // "" on a Unix socket (logged as "unix")
  int remote_port = 0;
  const Request* request = nullptr;
  int status = 0;
  uint64_t sent = 0;             // response body bytes
  int64_t duration_us = 0;       // from the complete request head to the end of the response
  std::string_view log_date;     // "24/Nov/2026:22:30:00 +0000" (base::Clock::log_date)
  std::string_view iso_date;     // "2026-11-24T22:30:00+00:00" (base::Clock::iso_date)
  int pid = 0;
  // Values of the response headers the format names, in AccessFormat::response_headers() order;
  // a view with a null data() means the response had no such header.
  const std::string_view* response_headers = nullptr;
};

class AccessFormat {
 public:
  static constexpr size_t kMaxLine = 8192;   // bytes of a line, newline included
  static constexpr size_t kMaxValue = 4096;  // bytes of output one value may take
  static constexpr size_t kMaxResponseHeaders = 8;  // distinct %({name}o)s a format may use
  // Gunicorn's default (the Apache "combined" format).
  static constexpr std::string_view kDefault =
      R"(%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s")";
  static constexpr std::string_view kJson = "json";

  AccessFormat();  // compiled kDefault
  // Compiles `spec`: "json", or a Gunicorn format string ("%(h)s ..."). On error returns a
  // one-line message and leaves the current format in place; returns "" on success.
  std::string compile(std::string_view spec);
  // Writes one line ending in '\n' into out (at least kMaxLine bytes); returns its length.
  size_t render(const AccessRecord& r, char* out) const noexcept;

  bool json() const noexcept { return json_; }
  bool needs_duration() const noexcept { return needs_duration_; }
  bool needs_pid() const noexcept { return needs_pid_; }
  // Lower-case names of the response headers the format logs, in slot order.
  const std::vector<std::string>& response_headers() const noexcept { return response_headers_; }

  enum class Kind : uint8_t {
    kLiteral,
    kRemoteAddr,     // h
    kDash,           // l
    kUser,           // u: the user of HTTP Basic authentication
    kTime,           // t: "[24/Nov/2026:22:30:00 +0000]"
    kRequestLine,    // r: "GET /path?q HTTP/1.1"
    kMethod,         // m
    kPath,           // U: the path, without the query (as sent: not percent-decoded)
    kQuery,          // q
    kProtocol,       // H: "HTTP/1.1"
    kStatus,         // s
    kBytes,          // B
    kBytesClf,       // b (Gunicorn prints the count, 0 included)
    kReferer,        // f
    kUserAgent,      // a
    kSeconds,        // T
    kMicros,         // D
    kMillis,         // M
    kDecimalSeconds, // L: "0.000153"
    kPid,            // p: "<4242>"
    kRequestHeader,  // {name}i
    kResponseHeader, // {name}o
    kRemotePort,     // {REMOTE_PORT}e
    kTarget,         // {RAW_URI}e: the request target as sent
    kIsoTime,        // JSON "time"
  };

 private:
  struct Atom {
    Kind kind;
    std::string text;      // literal bytes, or the lower-case header name
    uint8_t slot = 0;      // kResponseHeader: index into AccessRecord::response_headers
    size_t tail = 0;       // bytes reserved for everything after this atom (newline included)
  };
  std::string add_atom(std::string_view name);
  void finish();

  std::vector<Atom> atoms_;
  std::vector<std::string> response_headers_;
  bool json_ = false;
  bool needs_duration_ = false;
  bool needs_pid_ = false;
};

}  // namespace fulmen::http1
