// The upgraded life of an HTTP/1.1 connection: WebSocket (RFC 6455) after a 101. The contract
// with the bridge is in exchange.hpp (the ws_* calls and AppHandler::on_ws_*); framing is
// core/ws/frame, the handshake core/ws/handshake.
//
// Reading is pulled by the app: frames are parsed only while it has room for messages
// (ws_want), so a slow app stops the engine reading and TCP pushes back on the client. Control
// frames are answered here. Whole messages are handed to the bridge as views: straight into the
// read buffer when a message arrived in one piece (the common case), else from `msg`, where
// fragments and messages longer than one read are gathered.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/base/ascii.hpp"
#include "core/http1/connection.hpp"
#include "core/http1/status.hpp"
#include "core/server.hpp"
#include "core/ws/frame.hpp"
#include "core/ws/handshake.hpp"

namespace fulmen::http1 {

namespace {
// A gathered message's storage is kept for the next one up to this size, and freed beyond it,
// so one large message does not pin its memory to an idle connection.
constexpr size_t kKeepMessageCapacity = 64 * 1024;
// Reads (of up to a buffer each, 68 KiB by default) one connection gets per loop step.
constexpr int kReadsPerStep = 16;

bool bad_value_byte(unsigned char c) noexcept { return c == '\r' || c == '\n' || c == 0; }
}  // namespace


// ---- the handshake --------------------------------------------------------------------------

bool Connection::check_upgrade() noexcept {
  ws_request_ = false;
  if (!server_->config().websocket || !req_.upgrade) return true;
  ws::HandshakeError e = ws::parse_upgrade(req_, server_->ws_scratch());
  switch (e) {
    case ws::HandshakeError::kNone:
      break;
    case ws::HandshakeError::kNotGet:
    case ws::HandshakeError::kBadHttpVersion:
    case ws::HandshakeError::kNoUpgradeWebSocket:
    case ws::HandshakeError::kNoConnectionUpgrade:
      return true;  // an upgrade to something else (h2c, ...): served as plain HTTP
    default: {
      // A WebSocket handshake we cannot accept: the engine answers, the app never sees it.
      keep_alive_ = false;
      int status = ws::error_status(e);
      char body[160];
      int n = snprintf(body, sizeof body, "%s: %s\n", status_reason(status).data(), ws::error_reason(e));
      write_simple(status, std::string_view(body, size_t(std::max(n, 0))),
                   status == 426 ? "Sec-WebSocket-Version: 13\r\n" : "");
      finished_ = true;
      if (server_->config().access_log_fd >= 0) log_access();
      state_ = State::kClosing;
      return false;
    }
  }
  if (!body_done_) {
    // RFC 6455 4.1: the opening handshake is a GET without a body; bytes after the head are frames.
    keep_alive_ = false;
    write_simple(400, "Bad Request: a WebSocket handshake has no body\n");
    finished_ = true;
    if (server_->config().access_log_fd >= 0) log_access();
    state_ = State::kClosing;
    return false;
  }
  ws_request_ = true;
  return true;
}

size_t Connection::ws_subprotocols(std::string_view* out, size_t max) const noexcept {
  if (!ws_request_ || ws_) return 0;
  ws::Handshake& hs = server_->ws_scratch();
  if (ws::parse_upgrade(req_, hs) != ws::HandshakeError::kNone) return 0;
  for (size_t i = 0; i < hs.num_protocols && i < max; ++i) out[i] = hs.protocols[i];
  return hs.num_protocols;
}

Exchange::StartError Connection::ws_accept(std::string_view subprotocol, const Header* headers,
                                           size_t n) noexcept {
  if (!ws_request_ || started_ || ws_ || state_ != State::kInApp) return StartError::kAlreadyStarted;
  if (!subprotocol.empty() && !base::is_token(subprotocol)) return StartError::kBadHeader;
  bool has_server = false, has_date = false;
  for (size_t i = 0; i < n; ++i) {
    if (!base::is_token(headers[i].name)) return StartError::kBadHeader;
    for (char c : headers[i].value)
      if (bad_value_byte(static_cast<unsigned char>(c))) return StartError::kBadHeader;
    if (base::iequals(headers[i].name, "server")) has_server = true;
    if (base::iequals(headers[i].name, "date")) has_date = true;
  }
  ws::Handshake& hs = server_->ws_scratch();
  if (ws::parse_upgrade(req_, hs) != ws::HandshakeError::kNone) return StartError::kBadHeader;
  if (server_->config().access_log_fd >= 0) capture_response_headers(headers, n);
  ws::AcceptValue accept = ws::compute_accept(hs.key);
  ws::DeflateParams deflate;
  ws::ExtensionResponse extension;
  bool deflate_on = false;
  if (server_->config().ws_deflate) {
    ws::DeflateConfig dc;
    deflate_on = ws::negotiate_deflate(hs, dc, &deflate, &extension);
  }

  ensure_out();
  base::Buffer& o = *out_;
  o.append("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Accept: ");
  o.append(accept.view());
  o.append("\r\n");
  if (!subprotocol.empty()) {
    o.append("Sec-WebSocket-Protocol: ");
    o.append(subprotocol);
    o.append("\r\n");
  }
  if (deflate_on) {
    o.append("Sec-WebSocket-Extensions: ");
    o.append(extension.view());
    o.append("\r\n");
  }
  if (!has_server) o.append("Server: fulmen\r\n");
  if (!has_date) {
    o.append("Date: ");
    o.append(server_->loop().clock().http_date());
    o.append("\r\n");
  }
  for (size_t i = 0; i < n; ++i) {
    std::string_view name = headers[i].name;
    // The handshake's own fields are the engine's; framing fields mean nothing on a 101.
    if (base::iequals(name, "connection") || base::iequals(name, "upgrade") ||
        base::iequals(name, "sec-websocket-accept") || base::iequals(name, "sec-websocket-extensions") ||
        base::iequals(name, "sec-websocket-protocol") || base::iequals(name, "content-length") ||
        base::iequals(name, "transfer-encoding") || base::iequals(name, "keep-alive"))
      continue;
    o.append(name);
    o.append(": ");
    o.append(headers[i].value);
    o.append("\r\n");
  }
  o.append("\r\n");
  started_ = true;
  status_ = 101;
  sent_ = 0;
  keep_alive_ = false;
  if (server_->config().access_log_fd >= 0) log_access();

  // The head's views die here (the bridge copied what it needed into the scope): frames the
  // client sent right behind the head move to the front of the buffer.
  if (in_) {
    size_t rest = in_->end() - body_pos_;
    if (rest) std::memmove(in_->data(), in_->data() + body_pos_, rest);
    in_->set_window(0, rest);
  }
  head_len_ = body_pos_ = 0;
  fwd_ = ForwardedInfo{};  // its views pointed into the head
  // No more request heads on this connection: give back the header slots (2 KiB or more), so an
  // idle WebSocket costs the engine about 1 KiB (Connection + WsState, buffers back in the pools).
  std::vector<Header>().swap(headers_);
  ws::FrameOptions options;
  options.max_message = server_->config().ws_max_size;
  options.allow_rsv1 = deflate_on;
  options.defer_binary_unmask = true;  // see ws_deliver_masked
  ws_ = std::make_unique<WsState>(options);
  if (deflate_on) {
    ws_->deflate = true;
    ws_->deflate_params = deflate;
    // Inflated messages are held to the same --ws-max-size as plain ones.
    ws_->inflater.emplace(deflate, server_->config().ws_max_size);
  }
  state_ = State::kWebSocket;
  net::TimerList::disarm(timer);
  if (server_->stopping()) ws_fail(ws::close_code::kServiceRestart, "server shutting down", true, true);
  kick();
  return StartError::kNone;
}

// ---- the app's side ---------------------------------------------------------------------------

Exchange::WriteStatus Connection::ws_send(bool binary, const char* data, size_t n) noexcept {
  if (state_ != State::kWebSocket || failed_ || ws_->close_sent) return WriteStatus::kError;
  ws::Opcode op = binary ? ws::Opcode::kBinary : ws::Opcode::kText;
  if (ws_->deflate) {
    // Every message is compressed once the extension is on, as browsers and most servers do:
    // some clients mishandle the uncompressed messages RFC 7692 allows.
    std::string& out = server_->ws_deflate_out();
    out.clear();
    if (server_->ws_deflater().compress(std::string_view(data, n),
                                        ws_->deflate_params.server_max_window_bits, &out, true)) {
      ws::FrameHead head = ws::make_frame_header(op, out.size(), true, true);
      WriteStatus st = queue_parts(head.view(), out.data(), out.size(), {});
      if (out.capacity() > kKeepMessageCapacity) std::string().swap(out);
      return st;
    }
  }
  ws::FrameHead head = ws::make_frame_header(op, n);
  return queue_parts(head.view(), data, n, {});
}

void Connection::ws_close(uint16_t code, std::string_view reason) noexcept {
  if (state_ != State::kWebSocket || ws_->close_sent) return;
  ws::CloseFrame frame = ws::make_close_frame(code, reason);
  ensure_out();
  out_->append(frame.view());
  ws_->close_sent = true;
  ws_->told = true;  // the app closed: it needs no on_ws_closed()
  kick();            // sends it, and keeps reading for the client's close frame
}

void Connection::ws_want(bool on) noexcept {
  if (!ws_ || ws_->want == on) return;
  ws_->want = on;
  if (on) kick();
}

void Connection::ws_app_done() noexcept {
  // The app returned: finish the closing handshake alone (1000 if the app did not close).
  if (state_ == State::kWebSocket && !ws_->close_sent) ws_close(ws::close_code::kNormal, {});
  detached_ = false;
  paused_ = false;
  ws_->want = false;
  kick();
}

// ---- the engine's side --------------------------------------------------------------------------

bool Connection::step_ws() noexcept {
  WsState& w = *ws_;
  int reads = 0;
  if (paused_) {
    // The app waits for its last send to drain.
    if (flush()) {
      paused_ = false;
      if (detached_) server_->app()->on_resume(*this);
      return true;
    }
    if (failed_) return true;
  }
  for (;;) {
    if (!w.want && !w.close_sent) return false;  // the app is busy: leave the bytes in the socket
    // A client that does not read what we send (pongs to its pings, echoes) must not make the
    // output grow: above the high-water mark, read nothing until it drains (EPOLLOUT brings us
    // back), as for pipelined HTTP requests.
    if (out_ && out_->size() > server_->config().output_high_watermark && !flush()) return failed_;
    if (in_ && w.pos < in_->end()) {
      if (ws_feed()) return true;
    }
    // Everything read so far is parsed and handed out (views included): start the buffer over.
    if (in_) in_->clear();
    w.pos = 0;
    if (!readable_) {
      // Idle: a WebSocket keeps no read buffer and no message storage (the output buffer goes
      // back as soon as it drains, in flush() and queue_parts()).
      if (in_) server_->in_pool().put(std::move(in_));
      if (w.msg.empty() && w.msg.capacity()) std::string().swap(w.msg);  // not mid-message
      return false;
    }
    if (reads == kReadsPerStep) {
      // Fairness: one busy client (a flood of pings or empty fragments never reaches the app's
      // bound) must not hold the loop; the rest is read on a later step.
      if (!deferred_) {
        deferred_ = true;
        server_->defer(this);
      }
      return false;
    }
    ++reads;
    switch (read_some()) {
      case ReadResult::kGot:
      case ReadResult::kAgain:
      case ReadResult::kFull:  // not reached: the buffer was just emptied
        continue;
      case ReadResult::kEof:
      case ReadResult::kError:
        // Gone without a close frame (or without answering ours): 1006 for the app.
        if (!w.told) {
          w.told = true;
          if (detached_) server_->app()->on_ws_closed(*this, ws::close_code::kAbnormal, {});
        }
        close_now();
        return true;
    }
  }
}

// Feeds the parser what is buffered. True when it stopped early: the app has no more room, or
// the connection is closing or failed. False once every buffered byte is consumed.
bool Connection::ws_feed() noexcept {
  WsState& w = *ws_;
  for (;;) {
    if (!w.want && !w.close_sent) return true;
    ws::FrameParser::Result r = w.parser.feed(in_->data() + w.pos, in_->end() - w.pos);
    w.pos += r.consumed;
    switch (r.event) {
      case ws::FrameParser::Event::kNone:
        return false;
      case ws::FrameParser::Event::kHeader:
        continue;
      case ws::FrameParser::Event::kData: {
        bool binary = w.parser.message_opcode() == ws::Opcode::kBinary;
        char* piece = const_cast<char*>(r.payload.data());  // points into in_, which we own
        if (r.masked) {
          if (r.message_end && w.msg.empty()) {
            // A whole binary message in one piece: the bridge unmasks it as it copies it out.
            ws_deliver_masked(piece, r.payload.size(), r.mask_phase);
            if (state_ != State::kWebSocket) return true;
            continue;
          }
          ws::apply_mask(piece, r.payload.size(), w.parser.header().mask, r.mask_phase);
        }
        if (w.parser.message_compressed()) {
          if (!ws_inflate(r.payload, r.message_end, binary)) return true;
          if (state_ != State::kWebSocket) return true;
          continue;
        }
        if (r.message_end && w.msg.empty()) {
          ws_deliver(binary, r.payload);  // the whole message is this one piece: no copy
        } else {
          if (!ws_gather(r.payload)) return true;
          if (r.message_end) {
            ws_deliver(binary, w.msg);
            w.msg.clear();
            if (w.msg.capacity() > kKeepMessageCapacity) std::string().swap(w.msg);
          }
        }
        if (state_ != State::kWebSocket) return true;
        continue;
      }
      case ws::FrameParser::Event::kControl:
        ws_control(&r);
        if (state_ != State::kWebSocket) return true;
        continue;
      case ws::FrameParser::Event::kError:
        ws_fail(ws::close_code_for(r.error), ws::error_reason(r.error), true, false);
        return true;
    }
  }
}

// A piece of a compressed message: inflated into `msg`, delivered at its end. False if the
// connection failed (bad data, too big).
bool Connection::ws_inflate(std::string_view piece, bool message_end, bool binary) noexcept {
  WsState& w = *ws_;
  ws::Inflater& inf = *w.inflater;
  size_t before = w.msg.size();
  ws::Inflater::Status st = inf.feed(piece, &w.msg);
  if (st == ws::Inflater::Status::kOk && message_end) st = inf.finish(&w.msg);
  if (st != ws::Inflater::Status::kOk) {
    ws_fail(ws::close_code_for(st), ws::error_reason(st), true, false);
    return false;
  }
  if (!binary) {
    // Text is checked as it inflates, so an invalid message fails before it is all inflated.
    if (before == 0) w.utf8.reset();
    if (w.utf8.feed(std::string_view(w.msg).substr(before)) == ws::Utf8Validator::Status::kInvalid ||
        (message_end && w.utf8.status() != ws::Utf8Validator::Status::kValid)) {
      ws_fail(ws::close_code::kInvalidPayload, "invalid UTF-8 in a text message", true, false);
      return false;
    }
  }
  if (message_end) {
    ws_deliver(binary, w.msg);
    w.msg.clear();
    if (w.msg.capacity() > kKeepMessageCapacity) std::string().swap(w.msg);
    if (inf.can_release_between_messages()) inf.release();
  }
  return true;
}

// Appends to the message being gathered; out of memory fails this connection (1011), not the
// worker.
bool Connection::ws_gather(std::string_view piece) noexcept {
  try {
    ws_->msg.append(piece);
    return true;
  } catch (...) {
    ws_fail(ws::close_code::kInternalError, "out of memory", true, false);
    return false;
  }
}

void Connection::ws_deliver(bool binary, std::string_view data) noexcept {
  // After its own close the app gets no more messages (ASGI: receive() says disconnect).
  if (ws_->close_sent || !detached_) return;
  server_->app()->on_ws_message(*this, binary, data);
}

void Connection::ws_deliver_masked(char* data, size_t n, size_t phase) noexcept {
  if (ws_->close_sent || !detached_) return;
  server_->app()->on_ws_masked_message(*this, data, n, ws_->parser.header().mask, phase);
}

void Connection::ws_control(const void* result) noexcept {
  const auto& r = *static_cast<const ws::FrameParser::Result*>(result);
  WsState& w = *ws_;
  switch (w.parser.header().opcode) {
    case ws::Opcode::kPing:
      if (!w.close_sent) ws_queue_control(uint8_t(ws::Opcode::kPong), r.payload);
      break;
    case ws::Opcode::kPong:
      w.awaiting_pong = false;  // any pong will do (RFC 6455 5.5.3 allows unsolicited ones)
      break;
    case ws::Opcode::kClose:
      if (!w.close_sent) {
        // Echo the code (RFC 6455 5.5.1); a close without one is answered without one.
        ws::CloseFrame frame = ws::make_close_frame(r.close_code);
        ensure_out();
        out_->append(frame.view());
        w.close_sent = true;
      }
      if (!w.told) {
        w.told = true;
        if (detached_) server_->app()->on_ws_closed(*this, r.close_code, r.close_reason);
      }
      // Both close frames are out: the server closes the TCP connection first (RFC 6455 7.1.1).
      state_ = State::kClosing;
      break;
    default:
      break;
  }
}

void Connection::ws_queue_control(uint8_t opcode, std::string_view payload) noexcept {
  ws::FrameHead head = ws::make_frame_header(ws::Opcode(opcode), payload.size());
  ensure_out();
  out_->append(head.view());
  out_->append(payload);
}

// Closes with `code`: a protocol error or ping timeout (no waiting: RFC 6455 7.1.7 "fail the
// connection"), or a shutdown (wait_for_peer: the client gets to answer our close frame).
void Connection::ws_fail(uint16_t code, std::string_view reason, bool tell_app,
                         bool wait_for_peer) noexcept {
  WsState& w = *ws_;
  if (!w.close_sent) {
    ws::CloseFrame frame = ws::make_close_frame(code, reason);
    ensure_out();
    out_->append(frame.view());
    w.close_sent = true;
  }
  if (!w.told) {
    w.told = true;
    if (tell_app && detached_) server_->app()->on_ws_closed(*this, code, reason);
  }
  if (!wait_for_peer && state_ == State::kWebSocket) state_ = State::kClosing;
}

void Connection::ws_timer(net::TimerList* which) noexcept {
  WsState& w = *ws_;
  if (which == &server_->ws_ping_timers() && !w.close_sent) {
    char payload[4];
    uint32_t n = ++w.pings;
    std::memcpy(payload, &n, sizeof payload);
    ws_queue_control(uint8_t(ws::Opcode::kPing), std::string_view(payload, sizeof payload));
    w.awaiting_pong = true;
    drive();  // sends it and arms the pong timer
    return;
  }
  if (which == &server_->ws_pong_timers() && w.awaiting_pong && !w.close_sent) {
    ws_fail(ws::close_code::kInternalError, "keepalive ping timeout", true, false);
    drive();
    return;
  }
  close_now();  // our close frame went unanswered
}

void Connection::arm_ws_timer(int64_t now) noexcept {
  const WsState& w = *ws_;
  const ServerConfig& cfg = server_->config();
  net::TimerList* list;
  if (w.close_sent) {
    list = &server_->ws_close_timers();
  } else if (out_pending()) {
    // Output waits for the client: a client that stops reading is dropped after the same stall
    // time as an HTTP one (re-armed only on progress), pings or no pings. (A ping could not get
    // through anyway.)
    if (progress_ || timer.list != &server_->io_timers()) server_->io_timers().arm(timer, now);
    return;
  } else if (cfg.ws_ping_interval_ms <= 0) {
    net::TimerList::disarm(timer);
    return;
  } else if (w.awaiting_pong && cfg.ws_ping_timeout_ms > 0) {
    list = &server_->ws_pong_timers();
  } else if (w.awaiting_pong) {
    return;  // no pong timeout: wait as long as it takes
  } else {
    list = &server_->ws_ping_timers();
  }
  // Armed once per phase, not pushed back by traffic: pings go out every interval regardless.
  if (timer.list != list) list->arm(timer, now);
}

}  // namespace fulmen::http1
