// HTTP/1.1 connection state machine; see connection.hpp.
#include "core/http1/connection.hpp"
#include "core/http1/proxy_protocol.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/base/ascii.hpp"
#include "core/base/clock.hpp"
#include "core/http1/status.hpp"
#include "core/server.hpp"
#include "core/ws/frame.hpp"

namespace fulmen::http1 {

namespace {

// Bodies at least this large are written straight from the app's memory (writev together with
// whatever is queued) instead of being copied into the output buffer first.
constexpr size_t kDirectWrite = 16 * 1024;
// Header slots a connection starts with; it grows to --limit-request-fields only if a request
// has more.
constexpr size_t kInitialHeaders = 64;
// How much of an unread request body we are willing to read and drop to keep a connection alive.
constexpr uint64_t kMaxDiscard = 1024 * 1024;
// Inline mode: bytes per millisecond a client must keep up while the app waits for its body
// (64 KB/s), beyond the one body timeout every request gets.
constexpr uint64_t kMinBodyRate = 64;

constexpr std::string_view kCRLF = "\r\n";

bool bad_value_byte(unsigned char c) noexcept { return c == '\r' || c == '\n' || c == 0; }

}  // namespace

Connection::Connection(Server* server)
    : server_(server), chunked_(server->config().limits), probe_(server->config().limits) {
  headers_.resize(std::clamp<size_t>(server->config().limits.max_fields, 1, kInitialHeaders));
  timer.owner = this;
}

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
}

void Connection::open(int fd, const sockaddr* addr, socklen_t len, int listener_index,
                      bool is_unix) noexcept {
  fd_ = fd;
  // A connection that was a WebSocket gave its header slots back (connection_ws.cpp).
  if (headers_.empty())
    headers_.resize(std::clamp<size_t>(server_->config().limits.max_fields, 1, kInitialHeaders));
  listener_ = listener_index;
  is_unix_ = is_unix;
  state_ = State::kReadHead;
  readable_ = false;
  peer_eof_ = false;
  failed_ = false;
  paused_ = false;
  blocking_ = false;
  scan_from_ = 0;
  keep_alive_ = true;
  addr_len_ = 0;
  port_ = 0;
  if (!is_unix && addr) {
    if (addr->sa_family == AF_INET) {
      auto* a = reinterpret_cast<const sockaddr_in*>(addr);
      inet_ntop(AF_INET, &a->sin_addr, addr_text_, sizeof addr_text_);
      port_ = ntohs(a->sin_port);
    } else if (addr->sa_family == AF_INET6) {
      auto* a = reinterpret_cast<const sockaddr_in6*>(addr);
      if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
        inet_ntop(AF_INET, &a->sin6_addr.s6_addr[12], addr_text_, sizeof addr_text_);
      } else {
        inet_ntop(AF_INET6, &a->sin6_addr, addr_text_, sizeof addr_text_);
      }
      port_ = ntohs(a->sin6_port);
    }
    addr_len_ = uint8_t(strnlen(addr_text_, sizeof addr_text_));
  }
  const ServerConfig& cfg = server_->config();
  trusted_peer_ = false;
  if (cfg.proxy_headers) {
    if (is_unix) {
      trusted_peer_ = cfg.trusted.all || cfg.trusted.unix_peers;
    } else if (addr && addr->sa_family == AF_INET) {
      trusted_peer_ = cfg.trusted.contains(false, reinterpret_cast<const uint8_t*>(
                                                      &reinterpret_cast<const sockaddr_in*>(addr)->sin_addr));
    } else if (addr && addr->sa_family == AF_INET6) {
      trusted_peer_ = cfg.trusted.contains(true, reinterpret_cast<const sockaddr_in6*>(addr)->sin6_addr.s6_addr);
    }
  }
  proxy_pending_ = cfg.proxy_protocol;
  fwd_ = ForwardedInfo{};
  arm_timer_for_state();
}

// --proxy-protocol: the connection's first bytes are a PROXY header. Once it is complete, its
// source address replaces the peer's and the bytes after it are the first HTTP request.
bool Connection::take_proxy_header() noexcept {
  ProxyHeader h;
  ptrdiff_t r = parse_proxy_header(in_->data(), in_->end(), &h);
  if (r == kProxyIncomplete) return false;
  if (r == kProxyError) {
    // Not a proxy speaking to us (or a broken one): there is nobody to answer in HTTP, and
    // nothing is logged, so that a scanner cannot flood the log.
    close_now();
    return false;
  }
  if (h.has_address) {
    inet_ntop(h.v6 ? AF_INET6 : AF_INET, h.src, addr_text_, sizeof addr_text_);
    addr_len_ = uint8_t(strnlen(addr_text_, sizeof addr_text_));
    port_ = h.src_port;
    // The balancer forwards the client's bytes: trust is the source's, not the balancer's.
    const ServerConfig& cfg = server_->config();
    if (cfg.proxy_headers) trusted_peer_ = cfg.trusted.contains(h.v6, h.src);
  }
  size_t rest = in_->end() - size_t(r);
  if (rest) std::memmove(in_->data(), in_->data() + r, rest);
  in_->set_window(0, rest);
  proxy_pending_ = false;
  return true;
}

// ---- event handling --------------------------------------------------------------------------

void Connection::on_io(uint32_t events) noexcept {
  if (lent_.load(std::memory_order_acquire)) {
    // A pool thread owns us: only remember that something happened.
    missed_events_.fetch_or(events, std::memory_order_relaxed);
    return;
  }
  if (state_ == State::kClosed) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) readable_ = true;
  if (events & (EPOLLRDHUP | EPOLLHUP)) peer_eof_ = true;  // data may still precede the FIN
  if (events & EPOLLERR) {
    failed_ = true;
  }
  drive();
}

void Connection::drive() noexcept {
  // Last, whichever way drive() ends: responses corked earlier in this batch leave once the
  // oldest is kMaxCorkNs old, even if this event corked nothing (a slow app, a close).
  struct CorkCheck {
    Server* s;
    ~CorkCheck() {
      if (s->corking()) s->cork_check();
    }
  } cork_check{server_};
  struct InDrive {
    bool& flag;
    bool saved;
    explicit InDrive(bool& f) : flag(f), saved(f) { f = true; }
    ~InDrive() { flag = saved; }
  } in_drive{in_drive_};
  for (;;) {
    if (failed_) {
      close_now();
      return;
    }
    switch (state_) {
      case State::kClosed:
      case State::kLent:
        return;
      case State::kReadHead:
      case State::kReadBody: {
        Step st = state_ == State::kReadHead ? step_read_head() : step_read_body();
        if (st == Step::kContinue) continue;
        if (st == Step::kHandedOff) return;  // a pool thread owns us now: touch nothing, not even state_
        break;
      }
      case State::kInApp:
        // Paused on output: resume the producer once everything queued went out.
        if (paused_) {
          if (!flush()) break;
          paused_ = false;
          server_->app()->on_resume(*this);
          continue;
        }
        if (detached_) {
          if (want_body_) {
            std::string_view data;
            if (body_peek(&data, false) != BodyStatus::kWouldBlock) {
              want_body_ = false;
              server_->app()->on_body_ready(*this);
              continue;
            }
          }
          if (peer_eof_ && !disconnect_told_ && state_ == State::kInApp) {
            // Everything the client sent before its FIN was read above; now it is gone.
            if (!readable_ || !want_body_) {
              disconnect_told_ = true;
              server_->app()->on_disconnect(*this);
              continue;
            }
          }
        }
        break;
      case State::kDiscardBody:
        if (step_discard()) continue;
        break;
      case State::kWebSocket:
        if (step_ws()) continue;
        break;
      case State::kClosing:
        if (!flush()) break;
        if (failed_) continue;
        ::shutdown(fd_, SHUT_WR);
        state_ = State::kLingering;
        release_buffers();
        continue;
      case State::kLingering: {
        char scratch[4096];
        for (;;) {
          ssize_t n = ::read(fd_, scratch, sizeof scratch);
          if (n > 0) continue;
          if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            close_now();
            return;
          }
          break;
        }
        break;
      }
    }
    break;  // waiting for I/O
  }
  if (state_ == State::kClosed || state_ == State::kLent) return;
  if (out_pending() && state_ == State::kReadHead && server_->corking()) {
    // The response is complete: it leaves with the others of this batch (Server::cork).
    if (!corked_) {
      corked_ = true;
      server_->cork(this);
    }
    return;
  }
  if (out_pending() && !flush() && failed_) {
    close_now();
    return;
  }
  arm_timer_for_state();
}

void Connection::uncork() noexcept {
  if (!corked_) return;
  corked_ = false;
  if (state_ != State::kReadHead) return;  // closed meanwhile, or whatever moved it on flushes
  if (out_pending() && !flush() && failed_) {
    if (server_->corking()) {
      // Sent early, within the batch (Server::cork's time limit), where an event for this
      // connection may still be waiting in it: close from the deferred run after the batch.
      if (!deferred_) {
        deferred_ = true;
        server_->defer(this);
      }
      return;
    }
    close_now();
    return;
  }
  arm_timer_for_state();
}

void Connection::arm_timer_for_state() noexcept {
  auto now = server_->loop().clock().now_ms();
  struct ResetProgress {
    bool& p;
    ~ResetProgress() { p = false; }
  } reset{progress_};
  switch (state_) {
    case State::kReadHead:
      if (in_ && in_->end() > 0) {
        if (timer.list != &server_->header_timers()) server_->header_timers().arm(timer, now);
      } else if (out_pending()) {
        server_->io_timers().arm(timer, now);
      } else {
        server_->keep_alive_timers().arm(timer, now);
      }
      break;
    case State::kInApp:
      // An app that is thinking has no timeout here (as under Uvicorn); one waiting for the
      // client, to read its output or to send its body, does.
      if (!paused_ && !want_body_) {
        net::TimerList::disarm(timer);
        break;
      }
      [[fallthrough]];
    case State::kReadBody:
    case State::kDiscardBody:
    case State::kClosing:
      // Re-armed only on progress in the direction we wait for (bytes written, or body bytes
      // read), so it measures a stall, not the length of a slow transfer, and bytes a client
      // sends while ignoring our output do not keep it alive.
      if (progress_ || timer.list != &server_->io_timers()) server_->io_timers().arm(timer, now);
      break;
    case State::kLingering:
      if (timer.list != &server_->linger_timers()) server_->linger_timers().arm(timer, now);
      break;
    case State::kWebSocket:
      arm_ws_timer(now);
      break;
    case State::kClosed:
    case State::kLent:
      net::TimerList::disarm(timer);
      break;
  }
}

void Connection::on_timer(net::TimerList* which) noexcept {
  if (state_ == State::kWebSocket) {
    ws_timer(which);  // pings, a missing pong, or the client's close that never came
    return;
  }
  // Header timeout, keep-alive expiry, a stalled writer or body, or the end of lingering: all end
  // the connection. A paused app is told through on_abort().
  close_now();
}

void Connection::stop_if_idle() noexcept {
  if (state_ == State::kWebSocket) {
    // Going away: close frame 1012 (Service Restart), tell the app, and let the client answer.
    ws_fail(ws::close_code::kServiceRestart, "server shutting down", true, true);
    drive();
    return;
  }
  if (state_ == State::kReadHead && (!in_ || in_->end() == 0) && !out_pending()) {
    // A request may be sitting unread in the socket (no edge seen yet): serve it now (with
    // "Connection: close"). A connection with nothing to read is left as it is, keep-alive
    // deadline included: its next request or its timer ends it.
    char c;
    ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    readable_ = true;
    drive();
  }
}

void Connection::close_now() noexcept {
  if (state_ == State::kClosed) return;
  if ((state_ == State::kInApp && paused_) || detached_) {
    paused_ = false;
    detached_ = false;
    want_body_ = false;
    server_->app()->on_abort(*this);
  }
  net::TimerList::disarm(timer);
  server_->loop().remove(fd_);
  ::close(fd_);
  fd_ = -1;
  state_ = State::kClosed;
  corked_ = false;  // a reuse of this object within the same batch starts clean
  file_left_ = 0;
  ws_.reset();
  ws_request_ = false;
  release_buffers();
  server_->release(this);
}

void Connection::force_shutdown() noexcept {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

void Connection::release_buffers() noexcept {
  if (in_) server_->in_pool().put(std::move(in_));
  if (out_) server_->out_pool().put(std::move(out_));
}

void Connection::ensure_in() noexcept {
  if (!in_) in_ = server_->in_pool().get();
}

void Connection::ensure_out() noexcept {
  if (!out_) out_ = server_->out_pool().get();
}

Connection::ReadResult Connection::read_some() noexcept {
  ensure_in();
  size_t space = in_->space();
  if (space == 0) return ReadResult::kFull;
  for (;;) {
    ssize_t n = ::read(fd_, in_->end_ptr(), space);
    if (n > 0) {
      in_->commit(size_t(n));
      // A short read drained the socket; the next byte to arrive raises a new edge.
      if (size_t(n) < space) readable_ = false;
      return ReadResult::kGot;
    }
    if (n == 0) {
      readable_ = false;
      peer_eof_ = true;
      return ReadResult::kEof;
    }
    if (errno == EINTR) continue;
    readable_ = false;
    if (errno == EAGAIN) return ReadResult::kAgain;
    return ReadResult::kError;
  }
}

// ---- reading request heads --------------------------------------------------------------------

Connection::Step Connection::step_read_head() noexcept {
  for (;;) {
    // Pipelined requests whose responses the client does not read must not pile up: above the
    // watermark, stop parsing until the output drains (EPOLLOUT brings us back here).
    if (out_ && out_->size() > server_->config().output_high_watermark && !flush()) {
      return failed_ ? Step::kContinue : Step::kWait;
    }
    if (proxy_pending_ && in_ && in_->end() > 0) {
      if (take_proxy_header()) continue;
      if (state_ == State::kClosed) return Step::kWait;
      // Incomplete: read more below (the header timer bounds a client that stops here).
    } else if (in_ && in_->end() > 0) {
      ParseError err = ParseError::kNone;
      req_.headers = headers_.data();
      req_.headers_capacity = headers_.size();
      // The buffer is larger than the head budget, so a head that uses all of its budget still
      // leaves room to read its body, and one that exceeds it is refused before the buffer fills.
      ptrdiff_t r = parse_request_head(in_->data(), in_->end(), server_->config().limits, req_,
                                       &err, &scan_from_, server_->config().buffer_size);
      if (r == kError && err == ParseError::kTooManyHeaders &&
          headers_.size() < server_->config().limits.max_fields) {
        // Header storage starts small and grows to the configured limit only when a request
        // needs it, so a large --limit-request-fields does not cost memory per connection.
        headers_.resize(server_->config().limits.max_fields);
        scan_from_ = 0;
        continue;
      }
      if (r > 0) {
        head_len_ = size_t(r);
        if (wants_body_first()) {
          state_ = State::kReadBody;
          return Step::kContinue;
        }
        return begin_exchange(head_len_) ? Step::kHandedOff : Step::kContinue;
      }
      if (r == kError) {
        reject(err);
        return Step::kContinue;
      }
    }
    if (!readable_) {
      // Stopping does not close an idle keep-alive connection here: the client may be sending
      // its next request right now, and a close would race with it (the client sees EOF or a
      // reset for a request it cannot know was never read). The connection waits for that
      // request, which is answered with "Connection: close", or for its keep-alive timeout or
      // the graceful deadline, whichever comes first.
      if (in_ && in_->end() == 0 && !out_pending()) release_buffers();
      if (peer_eof_ && (!in_ || in_->end() == 0)) {
        // The client half-closed and every request it sent is answered: done.
        if (out_pending()) {
          keep_alive_ = false;
          state_ = State::kClosing;
          return Step::kContinue;
        }
        close_now();
      }
      return Step::kWait;
    }
    switch (read_some()) {
      case ReadResult::kGot:
        continue;
      case ReadResult::kAgain:
        continue;  // readable_ is now false
      case ReadResult::kFull:  // the parser rejects heads that fill the buffer; not reached
      case ReadResult::kEof:
      case ReadResult::kError:
        if (out_pending()) {
          // Answer what was already asked, then close.
          keep_alive_ = false;
          state_ = State::kClosing;
          return Step::kContinue;
        }
        close_now();
        return Step::kWait;
    }
  }
}

// Inline mode runs the app on the loop thread, where a read that waits for a slow client would
// stall every other connection. So a body that fits in the input buffer is read completely by the
// loop (non-blocking) before the app is called: a Content-Length body by its length, a chunked
// one until a probe decoder sees its end. Not for 100-continue (the client waits for our go-ahead);
// bodies larger than the buffer are streamed to the app as usual.
bool Connection::wants_body_first() noexcept {
  if (!server_->config().prefetch_body || server_->config().threads > 1 || req_.expect_continue)
    return false;
  if (req_.body == BodyKind::kChunked) {
    probe_.reset();
    probe_pos_ = head_len_;
    return true;
  }
  if (req_.body != BodyKind::kLength) return false;
  uint64_t need = uint64_t(head_len_) + req_.content_length;
  return need <= in_->capacity() && in_->end() < need;
}

Connection::Step Connection::step_read_body() noexcept {
  for (;;) {
    if (req_.body == BodyKind::kChunked) {
      while (probe_pos_ < in_->end()) {
        auto r = probe_.feed(in_->data() + probe_pos_, in_->end() - probe_pos_);
        probe_pos_ += r.consumed;
        if (r.error != ParseError::kNone) {
          reject(r.error);  // the body is malformed (or too large): answer now, as for a head
          return Step::kContinue;
        }
        if (r.done) return begin_exchange(head_len_) ? Step::kHandedOff : Step::kContinue;
        if (r.consumed == 0) break;
      }
      // Out of room before the end: the app streams the rest while it runs.
      if (in_->space() == 0) return begin_exchange(head_len_) ? Step::kHandedOff : Step::kContinue;
    } else if (in_->end() >= uint64_t(head_len_) + req_.content_length) {
      return begin_exchange(head_len_) ? Step::kHandedOff : Step::kContinue;
    }
    if (!readable_) {
      if (peer_eof_) close_now();  // the client half-closed before sending the whole body
      return Step::kWait;
    }
    ReadResult rr = read_some();
    if (rr == ReadResult::kGot) {
      progress_ = true;
      continue;
    }
    if (rr == ReadResult::kAgain) continue;
    close_now();  // EOF or error before the body was complete: nobody to answer
    return Step::kWait;
  }
}

// Returns true if the exchange went to a pool thread (the caller must not touch us any more).
bool Connection::begin_exchange(size_t head_len) noexcept {
  head_len_ = head_len;
  body_pos_ = head_len;
  cur_off_ = cur_len_ = 0;
  body_error_ = BodyError::kNone;
  chunked_.reset();
  switch (req_.body) {
    case BodyKind::kNone:
      body_done_ = true;
      body_left_ = 0;
      break;
    case BodyKind::kLength:
      body_left_ = req_.content_length;
      body_done_ = body_left_ == 0;
      break;
    case BodyKind::kChunked:
      body_left_ = 0;
      body_done_ = false;
      break;
  }
  continue_pending_ = req_.expect_continue && !body_done_;
  body_received_ = 0;
  body_wait_ms_ = 0;
  started_ = finished_ = false;
  chunked_out_ = no_body_ = file_crlf_ = false;
  status_ = 0;
  declared_len_ = -1;
  sent_ = 0;
  if (server_->config().access_log_fd >= 0) {
    const AccessFormat& fmt = server_->config().access_format;
    if (fmt.needs_duration()) req_start_us_ = base::monotonic_us();
    for (size_t i = 0; i < fmt.response_headers().size(); ++i) resp_cap_len_[i] = kNotCaptured;
  }
  file_left_ = 0;
  keep_alive_ = req_.keep_alive && !server_->stop_requested();
  paused_ = false;
  detached_ = false;
  want_body_ = false;
  disconnect_told_ = false;
  app_state = nullptr;
  server_->count_request();
  net::TimerList::disarm(timer);
  if (trusted_peer_ && !read_forwarded(req_, server_->config().trusted, server_->config().forwarded_headers, &fwd_)) {
    // The trusted proxies' part of the proxy headers is malformed: serving the request as from
    // the peer (the proxy) would give it the proxy's address, so refuse it.
    keep_alive_ = false;
    write_simple(400, "Bad Request: malformed proxy headers (X-Forwarded-For / Forwarded)\n");
    finished_ = true;
    if (server_->config().access_log_fd >= 0) log_access();
    state_ = State::kClosing;
    return false;
  }
  if (uint64_t limit = server_->config().limit_concurrency;
      limit && server_->open_connections() > limit) {
    // Over --limit-concurrency: refuse cheaply and shed the connection (Uvicorn answers 503 too).
    keep_alive_ = false;
    write_simple(503, "Service Unavailable: the server is at its concurrency limit\n");
    finished_ = true;
    if (server_->config().access_log_fd >= 0) log_access();
    state_ = State::kClosing;
    return false;
  }
  if (!check_upgrade()) return false;  // a refused handshake was answered: kClosing
  if (server_->config().threads > 1) {
    state_ = State::kLent;
    blocking_ = true;
    lent_.store(true, std::memory_order_release);
    server_->dispatch_to_pool(this);
    return true;
  }
  state_ = State::kInApp;
  blocking_ = false;
  server_->app()->on_request(*this);
  if (state_ == State::kInApp && !paused_ && !finished_ && !detached_) {
    // The handler returned without finishing, pausing or detaching: never leave the client hanging.
    if (!started_) {
      send_simple(500, "Internal Server Error\n", true);
    } else {
      abort();
    }
  }
  return false;
}

void Connection::serve_lent() noexcept {
  server_->app()->on_request(*this);
  if (!finished_) {
    if (!started_) send_simple(500, "Internal Server Error\n", true);
    else abort();
  }
  server_->return_from_pool(this);
}

void Connection::on_returned() noexcept {
  lent_.store(false, std::memory_order_release);
  missed_events_.store(0, std::memory_order_relaxed);
  blocking_ = false;
  readable_ = true;  // an edge may have fired while we were away: look
  if (state_ == State::kLent) state_ = State::kReadHead;  // not reached: finish() moves on
  drive();
}

// Called once the response is complete (finish) on the thread that owns the connection: decides
// what happens to the rest of the request body and to the connection. Touches no loop state.
void Connection::after_response() noexcept {
  if (server_->stop_requested()) keep_alive_ = false;
  if (!body_done_ && body_error_ == BodyError::kNone && keep_alive_) {
    if (continue_pending_) {
      // The client is waiting for our go-ahead that will never come; it may or may not send the
      // body anyway, so the connection cannot be reused safely (RFC 9110 section 10.1.1).
      keep_alive_ = false;
    } else {
      uint64_t left = req_.body == BodyKind::kLength ? body_left_ : kMaxDiscard;
      if (left > kMaxDiscard) keep_alive_ = false;
    }
  }
  if (body_error_ != BodyError::kNone) keep_alive_ = false;
  if (!keep_alive_) {
    state_ = State::kClosing;
    return;
  }
  if (!body_done_) {
    discard_left_ = kMaxDiscard;
    state_ = State::kDiscardBody;
    return;
  }
  // Move pipelined bytes (if any) to the front; the old head's views die here.
  size_t rest = in_ ? in_->end() - body_pos_ : 0;
  if (in_) {
    if (rest) std::memmove(in_->data(), in_->data() + body_pos_, rest);
    in_->set_window(0, rest);
  }
  scan_from_ = 0;
  head_len_ = body_pos_ = 0;
  state_ = State::kReadHead;
}

bool Connection::step_discard() noexcept {
  for (;;) {
    std::string_view data;
    BodyStatus s = body_peek(&data, false);
    if (s == BodyStatus::kData) {
      body_consume(data.size());
      if (data.size() > discard_left_) {
        keep_alive_ = false;  // more than we are willing to read for nothing
        state_ = State::kClosing;
        return true;
      }
      discard_left_ -= data.size();
      continue;
    }
    if (s == BodyStatus::kEof) {
      after_response();  // body done now: continue with the next request
      return true;
    }
    if (s == BodyStatus::kWouldBlock) return false;
    keep_alive_ = false;
    state_ = State::kClosing;
    return true;
  }
}

void Connection::reject(ParseError e) noexcept {
  // Strict parsing: answer once, then close (the framing of anything after this is unknowable).
  keep_alive_ = false;
  started_ = false;
  char body[160];
  int status = error_status(e);
  int n = snprintf(body, sizeof body, "%s: %s\n", status_reason(status).data(), error_reason(e));
  req_.method_id = Method::kOther;  // not HEAD: the error body is sent
  status_ = status;
  write_simple(status, std::string_view(body, size_t(std::max(n, 0))));
  state_ = State::kClosing;
}

// ---- request bodies ---------------------------------------------------------------------------

bool Connection::decode_body() noexcept {
  size_t avail = in_ ? in_->end() - body_pos_ : 0;
  if (avail == 0) return false;
  if (req_.body == BodyKind::kLength) {
    size_t take = size_t(std::min<uint64_t>(avail, body_left_));
    cur_off_ = body_pos_;
    cur_len_ = take;
    body_pos_ += take;
    body_left_ -= take;
    if (body_left_ == 0) body_done_ = true;
    return true;
  }
  auto r = chunked_.feed(in_->data() + body_pos_, avail);
  if (r.error != ParseError::kNone) {
    body_error_ = r.error == ParseError::kBodyTooLarge ? BodyError::kTooLarge : BodyError::kMalformed;
    return true;
  }
  cur_off_ = r.data.empty() ? body_pos_ : size_t(r.data.data() - in_->data());
  cur_len_ = r.data.size();
  body_pos_ += r.consumed;
  if (r.done) body_done_ = true;
  return r.consumed > 0 || r.done;
}

Exchange::BodyStatus Connection::body_peek(std::string_view* out, bool block) noexcept {
  for (;;) {
    if (body_error_ != BodyError::kNone) return BodyStatus::kError;
    if (cur_len_ > 0) {
      *out = std::string_view(in_->data() + cur_off_, cur_len_);
      return BodyStatus::kData;
    }
    if (body_done_) return BodyStatus::kEof;
    if (decode_body()) continue;
    // Everything decodable is consumed: keep any undecoded tail right after the head (which stays
    // in place for the views the app holds) and read more behind it.
    if (in_) {
      size_t rest = in_->end() - body_pos_;
      if (rest && body_pos_ != head_len_)
        std::memmove(in_->data() + head_len_, in_->data() + body_pos_, rest);
      in_->set_window(0, head_len_ + rest);
    }
    body_pos_ = head_len_;
    if (continue_pending_ && !started_) {
      if (!send_continue(block)) {
        body_error_ = BodyError::kDisconnected;
        return BodyStatus::kError;
      }
    }
    if (failed_) {
      body_error_ = BodyError::kDisconnected;
      return BodyStatus::kError;
    }
    size_t before = in_ ? in_->end() : 0;
    ReadResult rr = read_some();
    if (rr == ReadResult::kGot) {
      body_received_ += in_->end() - before;
      progress_ = true;
      continue;
    }
    if (rr == ReadResult::kAgain) {
      if (!block) return BodyStatus::kWouldBlock;
      int64_t timeout = server_->config().body_timeout_ms;
      if (server_->config().threads == 1) {
        // On the loop thread every other connection waits with us, so a client gets the body
        // timeout once plus time in proportion to what it sent (kMinBodyRate): a trickle of a
        // byte per second cannot hold the worker for long.
        int64_t budget = timeout + int64_t(body_received_ / kMinBodyRate) - body_wait_ms_;
        timeout = std::min(timeout, budget);
      }
      if (timeout <= 0 || !wait_fd(POLLIN, timeout)) {
        body_error_ = BodyError::kTimeout;
        return BodyStatus::kError;
      }
      continue;
    }
    body_error_ = BodyError::kDisconnected;  // EOF or error before the body was complete
    return BodyStatus::kError;
  }
}

void Connection::body_consume(size_t n) noexcept {
  n = std::min(n, cur_len_);
  cur_off_ += n;
  cur_len_ -= n;
}

bool Connection::send_continue(bool block) noexcept {
  continue_pending_ = false;
  static constexpr std::string_view k100 = "HTTP/1.1 100 Continue\r\n\r\n";
  ensure_out();
  out_->append(k100);
  if (block) return flush_blocking();
  flush();  // what does not go out now leaves with the next flush, still in order
  return !failed_;
}

// Blocks the calling thread until the socket is ready, the time is up, or (inline mode, where this
// is the loop thread) a stop request says so. In inline mode the wake pipe is watched too, so
// signal handlers run during a long wait and a stop is honoured.
bool Connection::wait_fd(short events, int64_t timeout_ms) noexcept {
  const bool on_loop = server_->config().threads == 1;
  const int64_t start = base::monotonic_ms();
  int64_t deadline = start + timeout_ms;
  BlockHooks* hooks = server_->block_hooks();
  bool ready = false;
  for (;;) {
    if (on_loop) {
      int64_t stop_by = server_->stop_wait_deadline_ms();
      if (stop_by >= 0) deadline = std::min(deadline, stop_by);
    }
    int64_t left = deadline - base::monotonic_ms();
    if (left <= 0) break;
    pollfd p[2] = {{fd_, events, 0}, {server_->loop().wake_read_fd(), POLLIN, 0}};
    hooks->before_block();
    int r = ::poll(p, on_loop ? 2 : 1, int(left));
    hooks->after_block();
    if (r < 0 && errno != EINTR) break;
    if (r > 0 && p[0].revents) {
      ready = true;
      break;
    }
    if (on_loop) server_->service_wakeup();  // runs signal handlers; may request a stop
  }
  if (on_loop) body_wait_ms_ += base::monotonic_ms() - start;
  return ready;
}

// ---- responses --------------------------------------------------------------------------------

Exchange::StartError Connection::start_response(int status, std::string_view reason,
                                                const Header* headers, size_t n) noexcept {
  if (started_) return StartError::kAlreadyStarted;
  // WSGI has no interim responses: a 1xx would be taken for the final one.
  if (status < 200 || status > 999) return StartError::kBadStatus;
  for (char c : reason)
    if (bad_value_byte(static_cast<unsigned char>(c))) return StartError::kBadStatus;
  bool has_server = false, has_date = false;
  int64_t declared = -1;
  // Validate everything before writing anything, so a bad header leaves no partial output.
  for (size_t i = 0; i < n; ++i) {
    std::string_view name = headers[i].name, value = headers[i].value;
    if (!base::is_token(name)) return StartError::kBadHeader;
    for (char c : value)
      if (bad_value_byte(static_cast<unsigned char>(c))) return StartError::kBadHeader;
    switch (name.size()) {
      case 4:
        if (base::iequals(name, "date")) has_date = true;
        break;
      case 6:
        if (base::iequals(name, "server")) has_server = true;
        break;
      case 14:
        if (base::iequals(name, "content-length")) {
          uint64_t v;
          if (!base::parse_u64(value, &v)) return StartError::kBadHeader;
          if (declared >= 0 && uint64_t(declared) != v) return StartError::kBadHeader;
          declared = int64_t(v);
        }
        break;
      case 10:
        if (base::iequals(name, "connection") && base::list_has_token(value, "close"))
          keep_alive_ = false;
        break;
      default:
        break;
    }
  }
  status_ = status;
  declared_len_ = declared;
  if (server_->config().access_log_fd >= 0) capture_response_headers(headers, n);
  no_body_ = req_.method_id == Method::kHead || status < 200 || status == 204 || status == 304;
  if (declared < 0 && !no_body_) {
    if (req_.version_minor >= 1) chunked_out_ = true;
    else keep_alive_ = false;  // HTTP/1.0 without a length: the close delimits the body
  }
  if (server_->stop_requested() || ws_request_) keep_alive_ = false;  // a denied upgrade closes
  // A final status before the body we never asked for: the client may still send it, so say we
  // close (RFC 9110 section 10.1.1), and never send 100 after this.
  if (continue_pending_ && !body_done_) keep_alive_ = false;
  continue_pending_ = false;
  // HEAD gets the framing header GET would have had, without a body.
  bool te_header = chunked_out_ || (req_.method_id == Method::kHead && declared < 0 &&
                                    req_.version_minor >= 1 && status >= 200 && status != 204 &&
                                    status != 304);
  std::string_view phrase = reason.empty() ? status_reason(status) : reason;
  std::string_view date = server_->loop().clock().http_date();
  std::string_view conn = !keep_alive_ ? std::string_view("Connection: close\r\n")
                          : req_.version_minor == 0 ? std::string_view("Connection: keep-alive\r\n")
                                                    : std::string_view();
  // One size pass, one reservation, then plain copies: this runs once per response.
  size_t total = 9 + 3 + 1 + phrase.size() + 2 + 16 + 6 + date.size() + 2 + 28 + conn.size() + 2;
  for (size_t i = 0; i < n; ++i) total += headers[i].name.size() + headers[i].value.size() + 4;
  ensure_out();
  out_->ensure_space(total);
  char* const begin = out_->end_ptr();
  char* p = begin;
  auto put = [&p](std::string_view v) {
    if (v.empty()) return;  // an empty view may have a null data(): memcpy must not see it
    std::memcpy(p, v.data(), v.size());
    p += v.size();
  };
  put("HTTP/1.1 ");
  p += base::format_u64(uint64_t(status), p);
  *p++ = ' ';
  put(phrase);
  put(kCRLF);
  if (!has_server) put("Server: fulmen\r\n");
  if (!has_date) {
    put("Date: ");
    put(date);
    put(kCRLF);
  }
  for (size_t i = 0; i < n; ++i) {
    std::string_view name = headers[i].name;
    // Hop-by-hop fields are the server's business (PEP 3333); we frame the message ourselves.
    if ((name.size() == 10 && (base::iequals(name, "connection") || base::iequals(name, "keep-alive"))) ||
        (name.size() == 17 && base::iequals(name, "transfer-encoding")))
      continue;
    put(name);
    put(": ");
    put(headers[i].value);
    put(kCRLF);
  }
  if (te_header) put("Transfer-Encoding: chunked\r\n");
  put(conn);
  put(kCRLF);
  out_->commit(size_t(p - begin));
  started_ = true;
  return StartError::kNone;
}

Exchange::WriteStatus Connection::write(const char* data, size_t n) noexcept {
  // After on_disconnect() the client is gone for the app: its output goes nowhere.
  if (failed_ || disconnect_told_ || !started_ || finished_) return WriteStatus::kError;
  if (no_body_ || n == 0) return WriteStatus::kOk;
  if (declared_len_ >= 0) {
    uint64_t room = uint64_t(declared_len_) - sent_;
    if (n > room) n = size_t(room);  // never more than the declared Content-Length
    if (n == 0) return WriteStatus::kOk;
  }
  sent_ += n;
  char hdr[24];
  size_t hlen = 0;
  if (chunked_out_) {
    hlen = base::format_hex(n, hdr);
    hdr[hlen++] = '\r';
    hdr[hlen++] = '\n';
  }
  return queue_parts({hdr, hlen}, data, n, chunked_out_ ? kCRLF : std::string_view());
}

Exchange::WriteStatus Connection::queue_parts(std::string_view head, const char* data, size_t n,
                                              std::string_view tail) noexcept {
  ensure_out();
  if (n >= kDirectWrite && file_left_ == 0) {
    // Large body: one writev of what is queued plus the app's bytes; copy only what did not go out.
    iovec iov[4];
    int cnt = 0;
    if (!out_->empty()) iov[cnt++] = {out_->begin_ptr(), out_->size()};
    if (!head.empty()) iov[cnt++] = {const_cast<char*>(head.data()), head.size()};
    iov[cnt++] = {const_cast<char*>(data), n};
    if (!tail.empty()) iov[cnt++] = {const_cast<char*>(tail.data()), tail.size()};
    size_t total = 0;
    for (int i = 0; i < cnt; ++i) total += iov[i].iov_len;
    ssize_t w;
    do {
      w = ::writev(fd_, iov, cnt);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno != EAGAIN) {
        failed_ = true;
        return WriteStatus::kError;
      }
      w = 0;
    }
    size_t done = size_t(w);
    if (done > 0) progress_ = true;
    if (done == total) {
      out_->clear();
      // An upgraded connection may now sit idle for hours: it keeps no empty buffer.
      if (state_ == State::kWebSocket) server_->out_pool().put(std::move(out_));
      return WriteStatus::kOk;
    }
    // Keep the unsent tail, in order, in the output buffer.
    size_t skip = done;
    std::unique_ptr<base::Buffer> rest = server_->out_pool().get();
    rest->ensure_space(total - done);
    for (int i = 0; i < cnt; ++i) {
      if (skip >= iov[i].iov_len) {
        skip -= iov[i].iov_len;
        continue;
      }
      rest->append(static_cast<char*>(iov[i].iov_base) + skip, iov[i].iov_len - skip);
      skip = 0;
    }
    server_->out_pool().put(std::move(out_));
    out_ = std::move(rest);
    return after_queue();
  }
  if (!head.empty()) out_->append(head);
  if (n) out_->append(data, n);
  if (!tail.empty()) out_->append(tail);
  return after_queue();
}

Exchange::WriteStatus Connection::after_queue() noexcept {
  WriteStatus st = queue_status();
  if (!in_drive_ && !blocking_ && st != WriteStatus::kError) kick();  // async app: send now
  return st;
}

Exchange::WriteStatus Connection::queue_status() noexcept {
  size_t high = server_->config().output_high_watermark;
  if ((!out_ || out_->size() <= high) && file_left_ == 0) return WriteStatus::kOk;
  if (flush()) return WriteStatus::kOk;
  if (failed_) return WriteStatus::kError;
  if (blocking_) return flush_blocking() ? WriteStatus::kOk : WriteStatus::kError;
  if (file_left_ == 0 && out_->size() <= high) return WriteStatus::kOk;
  paused_ = true;
  return WriteStatus::kPause;
}

Exchange::WriteStatus Connection::send_file(int fd, int64_t offset, int64_t count) noexcept {
  if (failed_ || disconnect_told_ || !started_ || finished_) return WriteStatus::kError;
  if (count < 0) {
    struct stat st;
    if (fstat(fd, &st) != 0) return WriteStatus::kError;
    count = std::max<int64_t>(0, st.st_size - offset);
  }
  if (no_body_ || count == 0) return WriteStatus::kOk;
  if (declared_len_ >= 0) count = std::min<int64_t>(count, declared_len_ - int64_t(sent_));
  if (count <= 0) return WriteStatus::kOk;
  sent_ += uint64_t(count);
  ensure_out();
  if (chunked_out_) {
    char hdr[24];
    size_t hlen = base::format_hex(uint64_t(count), hdr);
    hdr[hlen++] = '\r';
    hdr[hlen++] = '\n';
    out_->append(hdr, hlen);
    file_crlf_ = true;
  }
  file_fd_ = fd;
  file_off_ = offset;
  file_left_ = count;
  return after_queue();
}

bool Connection::flush() noexcept {
  if (failed_) return false;
  while (out_ && !out_->empty()) {
    ssize_t n = ::write(fd_, out_->begin_ptr(), out_->size());
    if (n > 0) {
      out_->consume(size_t(n));
      progress_ = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return false;
    failed_ = true;
    return false;
  }
  while (file_left_ > 0) {
    off_t off = file_off_;
    ssize_t n = ::sendfile(fd_, file_fd_, &off, size_t(std::min<int64_t>(file_left_, 1 << 30)));
    if (n > 0) {
      file_off_ = off;
      file_left_ -= n;
      progress_ = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return false;
    // n == 0: the file is shorter than promised; the framing is broken, so close.
    failed_ = true;
    return false;
  }
  if (file_crlf_) {
    file_crlf_ = false;
    ensure_out();
    out_->append(kCRLF);
    return flush();
  }
  if (out_ && state_ != State::kInApp && state_ != State::kLent) {
    server_->out_pool().put(std::move(out_));
  }
  return true;
}

bool Connection::flush_blocking() noexcept {
  while (!flush()) {
    if (failed_) return false;
    if (!wait_fd(POLLOUT, server_->config().body_timeout_ms)) {
      failed_ = true;
      return false;
    }
  }
  return true;
}

void Connection::want_body(bool on) noexcept {
  want_body_ = on;
  if (!in_drive_) kick();  // on: read for the app; off: stop the body timer (the app thinks)
}

// The app acted outside drive() (an async app's send or receive): flush now, so the bytes leave
// without waiting for a loop iteration, and let the next step run the state machine (running it
// here could start the next pipelined request inside the app's own call).
void Connection::kick() noexcept {
  if (in_drive_ || state_ == State::kClosed || state_ == State::kLent) return;
  if (out_pending() && !paused_) flush();
  if (!deferred_) {
    deferred_ = true;
    server_->defer(this);
  }
}

void Connection::run_deferred() noexcept {
  deferred_ = false;
  if (state_ == State::kClosed || lent_.load(std::memory_order_acquire)) return;
  drive();
}

bool Connection::wait_drained() noexcept {
  paused_ = false;
  return flush_blocking();
}

bool Connection::finish() noexcept {
  if (ws_) {
    ws_app_done();
    return !failed_;
  }
  if (finished_) return !failed_;
  if (disconnect_told_) {
    abort();  // nobody to finish for: close
    return false;
  }
  if (!started_) {
    send_simple(500, "Internal Server Error\n", true);
    return !failed_;
  }
  finished_ = true;
  paused_ = false;
  if (chunked_out_ && !failed_) {
    ensure_out();
    out_->append("0\r\n\r\n");
  }
  if (declared_len_ >= 0 && sent_ < uint64_t(declared_len_) && !no_body_) {
    keep_alive_ = false;  // the client is still waiting for bytes that will never come
  }
  if (server_->config().access_log_fd >= 0) log_access();
  if (blocking_ && !failed_) flush_blocking();
  if (!failed_) after_response();
  detached_ = false;
  want_body_ = false;
  if (!blocking_) kick();
  if (blocking_) {
    // Pool thread: the loop takes it from here (timers and epoll are the loop's).
    if (state_ == State::kInApp) state_ = State::kReadHead;
  }
  return !failed_;
}

void Connection::abort() noexcept {
  if (ws_) {
    // Upgraded: drop the connection (the client sees it end without a close frame).
    detached_ = false;
    paused_ = false;
    if (state_ == State::kWebSocket) state_ = State::kClosing;
    kick();
    return;
  }
  if (finished_) return;
  finished_ = true;
  paused_ = false;
  keep_alive_ = false;
  if (server_->config().access_log_fd >= 0 && started_) log_access();
  // What was already produced still goes out (the client sees a truncated message: no final
  // chunk, or fewer bytes than Content-Length), then the connection closes.
  if (!failed_) state_ = State::kClosing;
  detached_ = false;
  want_body_ = false;
  if (!blocking_) kick();
}

void Connection::send_simple(int status, std::string_view body, bool close) noexcept {
  if (started_) {
    abort();
    return;
  }
  if (close || ws_request_) keep_alive_ = false;
  write_simple(status, body);
  finished_ = true;
  if (server_->config().access_log_fd >= 0) log_access();
  if (blocking_ && !failed_) flush_blocking();
  if (!failed_) after_response();
  detached_ = false;
  want_body_ = false;
  if (!blocking_) kick();  // an async app's error path runs outside drive(): send it now
}

void Connection::write_simple(int status, std::string_view body, std::string_view extra) noexcept {
  ensure_out();
  base::Buffer& o = *out_;
  char num[24];
  o.append("HTTP/1.1 ");
  o.append(num, base::format_u64(uint64_t(status), num));
  o.append(" ");
  o.append(status_reason(status));
  o.append("\r\nServer: fulmen\r\nDate: ");
  o.append(server_->loop().clock().http_date());
  o.append("\r\n");
  o.append(extra);  // whole header lines, each ending in CRLF
  o.append("Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
  o.append(num, base::format_u64(body.size(), num));
  o.append(keep_alive_ && !server_->stop_requested() ? "\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
  if (req_.method_id != Method::kHead) o.append(body);
  started_ = true;
  status_ = status;
  sent_ = body.size();
}

void Connection::log_access() noexcept {
  const AccessFormat& fmt = server_->config().access_format;
  std::string_view resp[AccessFormat::kMaxResponseHeaders];
  size_t nresp = fmt.response_headers().size();
  for (size_t i = 0; i < nresp; ++i) {
    if (resp_cap_ && resp_cap_len_[i] != kNotCaptured)
      resp[i] = std::string_view(resp_cap_.get() + i * kCaptureBytes, resp_cap_len_[i]);
  }
  AccessRecord r;
  // The client as the app sees it: a trusted proxy's forwarded one, else the peer (or the
  // PROXY protocol's source); "" (logged "unix") for a Unix-socket peer.
  const ForwardedInfo* fwd = forwarded();
  if (fwd && !fwd->client.empty()) {
    r.remote_addr = fwd->client;
    r.remote_port = fwd->client_port;
  } else {
    r.remote_addr = addr_len_ ? remote_addr() : std::string_view();
    r.remote_port = port_;
  }
  r.request = &req_;
  r.status = status_;
  r.sent = sent_;
  if (fmt.needs_duration()) r.duration_us = base::monotonic_us() - req_start_us_;
  r.log_date = server_->loop().clock().log_date();
  r.iso_date = server_->loop().clock().iso_date();
  if (fmt.needs_pid()) r.pid = int(::getpid());
  r.response_headers = resp;
  char line[AccessFormat::kMaxLine];
  server_->access_log(std::string_view(line, fmt.render(r, line)));
}

void Connection::capture_response_headers(const Header* headers, size_t n) noexcept {
  const auto& names = server_->config().access_format.response_headers();
  if (names.empty()) return;
  if (!resp_cap_) resp_cap_.reset(new (std::nothrow) char[AccessFormat::kMaxResponseHeaders * kCaptureBytes]);
  if (!resp_cap_) return;
  for (size_t j = 0; j < names.size(); ++j) {
    resp_cap_len_[j] = kNotCaptured;
    for (size_t i = 0; i < n; ++i) {
      if (!base::iequals(headers[i].name, names[j])) continue;
      size_t k = std::min(headers[i].value.size(), kCaptureBytes);
      if (k) std::memcpy(resp_cap_.get() + j * kCaptureBytes, headers[i].value.data(), k);
      resp_cap_len_[j] = uint16_t(k);
      break;  // the first one, as for request headers
    }
  }
}

}  // namespace fulmen::http1
