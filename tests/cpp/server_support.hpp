// Shared by the end-to-end server tests (test_server.cpp, test_server_async.cpp): a loopback
// listener, a raw-socket HTTP/1.1 client that reads whole responses with a deadline, request
// builders, and the generated bodies both test apps serve and check. Header-only: everything is
// inline in fulmen::test, so any number of test sources may include it.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/server.hpp"

namespace fulmen::test {

inline int64_t mono_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---- generated bodies --------------------------------------------------------------------------

// The body byte at offset k of every generated body (not periodic in any chunk size used).
inline char pattern(uint64_t k) { return char('a' + (k % 251) % 26); }

inline std::string pattern_string(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = pattern(i);
  return s;
}

// Whether s is pattern(from), pattern(from + 1), ...; on failure, says where it differs.
inline ::testing::AssertionResult matches_pattern(const std::string& s, uint64_t from) {
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] != pattern(from + i)) return ::testing::AssertionFailure() << "mismatch at byte " << i;
  return ::testing::AssertionSuccess();
}

inline uint64_t fnv1a(uint64_t h, std::string_view s) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
inline constexpr uint64_t kFnvInit = 14695981039346656037ull;

// What /sum answers: "len=<n> fnv=<16 hex digits>", formatted without allocating (the apps use it
// in steady state, where nothing may be allocated per request).
struct SumText {
  char buf[64];
  size_t n;
  std::string_view view() const { return {buf, n}; }
};
inline SumText sum_chars(uint64_t len, uint64_t h) {
  SumText t;
  int n = std::snprintf(t.buf, sizeof t.buf, "len=%llu fnv=%016llx", (unsigned long long)len,
                        (unsigned long long)h);
  t.n = size_t(n);
  return t;
}
// The /sum answer for a whole body.
inline std::string sum_text(std::string_view body) {
  return std::string(sum_chars(body.size(), fnv1a(kFnvInit, body)).view());
}

// "a=1&b=2" -> value of key, or dflt. Allocation-free (values are read from a 32-byte copy).
inline int64_t query_int(std::string_view q, std::string_view key, int64_t dflt) {
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view kv = q.substr(0, amp);
    size_t eq = kv.find('=');
    if (eq != std::string_view::npos && kv.substr(0, eq) == key) {
      char v[32] = {};
      std::string_view val = kv.substr(eq + 1);
      std::memcpy(v, val.data(), std::min(val.size(), sizeof v - 1));
      return std::strtoll(v, nullptr, 10);
    }
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return dflt;
}

// ---- the server's side -------------------------------------------------------------------------

// Timeouts long enough never to fire unless a test shortens one.
inline ServerConfig test_config() {
  ServerConfig c;
  c.keep_alive_ms = 5000;
  c.header_timeout_ms = 5000;
  c.body_timeout_ms = 5000;
  c.graceful_timeout_ms = 5000;
  return c;
}

// A listening socket on 127.0.0.1, port chosen by the kernel. Buffer sizes > 0 are inherited by the
// accepted sockets: a small sndbuf makes the server's writes hit EAGAIN after a few KiB, a small
// rcvbuf makes an upload stall as soon as the engine stops reading.
struct Listener {
  int fd = -1;
  int port = 0;
};

inline Listener listen_loopback(int sndbuf, int rcvbuf = 0) {
  Listener l;
  l.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l.fd < 0) return l;
  int one = 1;
  setsockopt(l.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (sndbuf > 0) setsockopt(l.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  if (rcvbuf > 0) setsockopt(l.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (bind(l.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(l.fd, 128) != 0) {
    close(l.fd);
    l.fd = -1;
    return l;
  }
  socklen_t len = sizeof a;
  getsockname(l.fd, reinterpret_cast<sockaddr*>(&a), &len);
  l.port = ntohs(a.sin_port);
  return l;
}

// ---- the client's side -------------------------------------------------------------------------

struct Response {
  bool ok = false;
  std::string error;
  int status = 0;
  std::string version;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  // The first header of that name (case-insensitive), or nullptr.
  const std::string* find(std::string_view name) const {
    for (auto& [k, v] : headers)
      if (k.size() == name.size() &&
          std::equal(k.begin(), k.end(), name.begin(),
                     [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
        return &v;
    return nullptr;
  }
  std::string header(std::string_view name) const {
    const std::string* v = find(name);
    return v ? *v : std::string();
  }
  bool has(std::string_view name) const { return find(name) != nullptr; }
};

inline std::ostream& operator<<(std::ostream& o, const Response& r) {
  o << "Response{ok=" << r.ok << " error=\"" << r.error << "\" status=" << r.status
    << " body.size=" << r.body.size() << " body=\"" << r.body.substr(0, 200) << "\"}";
  return o;
}

// The response was read whole and is /hello's: the connection is still in step.
inline ::testing::AssertionResult is_hello(const Response& r) {
  if (!r.ok) return ::testing::AssertionFailure() << r;
  if (r.body != "hello") return ::testing::AssertionFailure() << "body is not \"hello\": " << r;
  return ::testing::AssertionSuccess();
}

// A blocking client socket; every read goes through poll with a deadline.
class Client {
 public:
  explicit Client(int port, int rcvbuf = 0, int sndbuf = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (sndbuf > 0) setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(uint16_t(port));
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~Client() {
    if (fd_ >= 0) close(fd_);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  bool eof() const { return eof_; }
  std::string& pending() { return buf_; }
  // Pacing for a deliberately slow reader: at most this many bytes per read, with a pause first.
  size_t read_size = 65536;
  int read_gap_ms = 0;

  bool send(std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      s.remove_prefix(size_t(n));
    }
    return true;
  }
  // Sends data[*off..] without blocking until everything went out (true) or the socket buffer
  // stayed full for stall_ms (false, *off tells how far it got).
  bool send_until_stall(std::string_view data, size_t* off, int stall_ms) {
    while (*off < data.size()) {
      ssize_t n = ::send(fd_, data.data() + *off, data.size() - *off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        *off += size_t(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN) return false;
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, stall_ms) == 0) return false;
    }
    return true;
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }
  // Closes our end (a FIN, or a reset if unread bytes are pending), so a server lingering after
  // its half-close finishes at once.
  void close_now() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    eof_ = true;
  }
  // Closes with a reset (SO_LINGER 0).
  void reset_now() {
    linger lg{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close_now();
  }

  // Waits up to timeout_ms for bytes (appended to pending()) or EOF. False on timeout.
  bool read_more(int timeout_ms) {
    if (eof_) return true;
    if (read_gap_ms > 0) poll(nullptr, 0, read_gap_ms);
    pollfd p{fd_, POLLIN, 0};
    int r;
    do {
      r = poll(&p, 1, std::max(timeout_ms, 0));
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return false;
    char tmp[65536];
    ssize_t n;
    do {
      n = ::recv(fd_, tmp, std::min(sizeof tmp, read_size), 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) buf_.append(tmp, size_t(n));
    else eof_ = true;  // EOF or reset
    return true;
  }

  // True once the server closed (EOF or reset) within timeout_ms; bytes before it are kept.
  bool wait_closed(int timeout_ms) {
    int64_t deadline = mono_ms() + timeout_ms;
    while (!eof_) {
      int64_t left = deadline - mono_ms();
      if (left <= 0 || !read_more(int(left))) return eof_;
    }
    return true;
  }

  // True if nothing at all arrives for ms milliseconds.
  bool quiet_for(int ms) {
    pollfd p{fd_, POLLIN, 0};
    return poll(&p, 1, ms) == 0;
  }

  // The next response, framed by Content-Length, chunked or the close (no body after a HEAD,
  // 1xx, 204 or 304). ok is false, and error says why, if it did not arrive whole in timeout_ms.
  Response read_response(int timeout_ms = 5000, bool head = false) {
    Response r;
    int64_t deadline = mono_ms() + timeout_ms;
    auto more = [&]() -> bool {
      if (eof_) return false;
      int64_t left = deadline - mono_ms();
      return left > 0 && read_more(int(left));
    };
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!more() || (eof_ && buf_.find("\r\n\r\n") == std::string::npos)) {
        r.error = eof_ ? "eof before head" : "timeout before head";
        return r;
      }
    }
    std::string headblock = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    size_t line_end = headblock.find("\r\n");
    std::string status_line = headblock.substr(0, line_end);
    if (status_line.size() < 12 || status_line.compare(0, 5, "HTTP/") != 0) {
      r.error = "bad status line: " + status_line;
      return r;
    }
    r.version = status_line.substr(0, 8);
    r.status = std::atoi(status_line.c_str() + 9);
    size_t pos = line_end == std::string::npos ? headblock.size() : line_end + 2;
    while (pos < headblock.size()) {
      size_t e = headblock.find("\r\n", pos);
      if (e == std::string::npos) e = headblock.size();
      std::string line = headblock.substr(pos, e - pos);
      size_t colon = line.find(':');
      std::string v = line.substr(colon + 1);
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      r.headers.emplace_back(line.substr(0, colon), v);
      pos = e + 2;
    }
    if (head || r.status < 200 || r.status == 204 || r.status == 304) {
      r.ok = true;
      return r;
    }
    if (r.header("Transfer-Encoding") == "chunked") {
      for (;;) {
        size_t le = buf_.find("\r\n");
        if (le == std::string::npos) {
          if (!more()) return r.error = "incomplete chunk size", r;
          continue;
        }
        size_t size = std::strtoull(buf_.substr(0, le).c_str(), nullptr, 16);
        if (size == 0) {
          while (buf_.size() < le + 4) {
            if (!more()) return r.error = "incomplete last chunk", r;
          }
          if (buf_.compare(le, 4, "\r\n\r\n") != 0) return r.error = "bad last chunk", r;
          buf_.erase(0, le + 4);
          break;
        }
        while (buf_.size() < le + 2 + size + 2) {
          if (!more()) return r.error = "incomplete chunk", r;
        }
        if (buf_.compare(le + 2 + size, 2, "\r\n") != 0) return r.error = "bad chunk end", r;
        r.body.append(buf_, le + 2, size);
        buf_.erase(0, le + 2 + size + 2);
      }
      r.ok = true;
      return r;
    }
    if (r.has("Content-Length")) {
      size_t n = std::strtoull(r.header("Content-Length").c_str(), nullptr, 10);
      while (buf_.size() < n) {
        if (!more()) {
          r.body = buf_;
          buf_.clear();
          return r.error = "incomplete body", r;
        }
      }
      r.body = buf_.substr(0, n);
      buf_.erase(0, n);
      r.ok = true;
      return r;
    }
    // Close-delimited.
    while (!eof_) {
      if (!more() && !eof_) return r.error = "timeout before close", r;
    }
    r.body = buf_;
    buf_.clear();
    r.ok = true;
    return r;
  }

 private:
  int fd_ = -1;
  std::string buf_;
  bool eof_ = false;
};

// ---- requests ----------------------------------------------------------------------------------

inline std::string get(std::string_view target, std::string_view extra = "") {
  return "GET " + std::string(target) + " HTTP/1.1\r\nHost: t\r\n" + std::string(extra) + "\r\n";
}
inline std::string post(std::string_view target, std::string_view body, std::string_view extra = "") {
  return "POST " + std::string(target) + " HTTP/1.1\r\nHost: t\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n" + std::string(extra) + "\r\n" + std::string(body);
}
// A chunked encoding of body with chunk sizes cycling through 1..max_chunk.
inline std::string chunked(std::string_view body, size_t max_chunk) {
  std::string out;
  size_t i = 0, k = 0;
  while (i < body.size()) {
    size_t n = std::min(body.size() - i, 1 + (k * 7919) % max_chunk);
    char hdr[24];
    int h = std::snprintf(hdr, sizeof hdr, "%zx\r\n", n);
    out.append(hdr, size_t(h));
    out.append(body.substr(i, n));
    out.append("\r\n");
    i += n;
    ++k;
  }
  out.append("0\r\n\r\n");
  return out;
}

// A streamed response both test apps serve at /stream?n=<total>&c=<chunk>&cl=<1|0>.
struct StreamCase {
  const char* name;
  uint64_t total;
  size_t chunk;
  bool content_length;
};

// Names the case in test listings (the default prints raw bytes, padding included).
inline void PrintTo(const StreamCase& c, std::ostream* os) { *os << c.name; }

inline std::string stream_target(const StreamCase& sc) {
  return "/stream?n=" + std::to_string(sc.total) + "&c=" + std::to_string(sc.chunk) +
         "&cl=" + (sc.content_length ? "1" : "0");
}

}  // namespace fulmen::test
