// One HTTP/1.1 connection: reads and parses request heads, streams bodies to the app, queues and
// batches responses, and closes cleanly. It is the Exchange the bridge talks to.
//
// Ownership: the loop thread owns a connection, except while it is lent to a pool thread
// (threads > 1); then only that thread touches it, and the loop only records missed events.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/base/buffer.hpp"
#include "core/http1/access_log.hpp"
#include "core/http1/exchange.hpp"
#include "core/http1/parser.hpp"
#include "core/net/loop.hpp"
#include "core/net/timer.hpp"
#include "core/ws/deflate.hpp"
#include "core/ws/frame.hpp"

namespace fulmen {
class Server;
}

namespace fulmen::http1 {

class Connection final : public net::IoHandler, public Exchange {
 public:
  explicit Connection(Server* server);
  ~Connection() override;

  void open(int fd, const sockaddr* addr, socklen_t len, int listener_index, bool is_unix) noexcept;
  void on_io(uint32_t events) noexcept override;
  void on_timer(net::TimerList* which) noexcept;  // `which`: the list the timer fired on
  // Graceful stop: close now if idle between requests; otherwise finish and close after.
  void stop_if_idle() noexcept;
  void close_now() noexcept;
  // Pool mode: runs the app on the calling (pool) thread, then hands the connection back.
  void serve_lent() noexcept;
  // Pool mode: back on the loop thread.
  void on_returned() noexcept;
  bool is_open() const noexcept { return state_ != State::kClosed; }
  bool is_lent() const noexcept { return lent_.load(std::memory_order_acquire); }
  void force_shutdown() noexcept;  // makes a lent connection's blocking I/O fail

  net::TimerNode timer;  // armed on one of the server's timer lists, by state

  // ---- Exchange -------------------------------------------------------------------------------
  const Request& request() const noexcept override { return req_; }
  std::string_view remote_addr() const noexcept override { return {addr_text_, addr_len_}; }
  int remote_port() const noexcept override { return port_; }
  int listener_index() const noexcept override { return listener_; }
  const ForwardedInfo* forwarded() const noexcept override { return fwd_.any() ? &fwd_ : nullptr; }
  BodyStatus body_peek(std::string_view* out, bool block) noexcept override;
  void body_consume(size_t n) noexcept override;
  BodyError body_error() const noexcept override { return body_error_; }
  bool body_finished() const noexcept override { return body_done_ && cur_len_ == 0; }
  StartError start_response(int status, std::string_view reason, const Header* headers,
                            size_t n) noexcept override;
  WriteStatus write(const char* data, size_t n) noexcept override;
  WriteStatus send_file(int fd, int64_t offset, int64_t count) noexcept override;
  bool wait_drained() noexcept override;
  bool finish() noexcept override;
  void abort() noexcept override;
  bool response_started() const noexcept override { return started_; }
  void send_simple(int status, std::string_view body, bool close) noexcept override;
  void detach() noexcept override { detached_ = true; }
  void want_body(bool on) noexcept override;
  bool peer_gone() const noexcept override { return peer_eof_ || failed_; }
  // Server::step() runs this for a connection that deferred itself (Server::defer).
  void run_deferred() noexcept;
  // Server::step() runs this after the event batch for a connection that corked its output.
  void uncork() noexcept;
  bool is_websocket() const noexcept override { return ws_request_; }
  size_t ws_subprotocols(std::string_view* out, size_t max) const noexcept override;
  StartError ws_accept(std::string_view subprotocol, const Header* headers,
                       size_t n) noexcept override;
  WriteStatus ws_send(bool binary, const char* data, size_t n) noexcept override;
  void ws_close(uint16_t code, std::string_view reason) noexcept override;
  void ws_want(bool on) noexcept override;

 private:
  enum class State : uint8_t {
    kClosed,
    kReadHead,     // waiting for / parsing the next request head
    kReadBody,     // inline mode: head parsed, waiting until a small body is all here
    kInApp,        // the app owns the exchange (inline: running or paused on output)
    kLent,         // pool mode: a pool thread owns everything
    kDiscardBody,  // response done; reading and dropping the unread rest of the request body
    kClosing,      // last response queued; flush, then half-close and linger
    kLingering,    // write side shut; drain what the client still sends, then close
    kWebSocket,    // upgraded (connection_ws.cpp): frames both ways until the closing handshake
  };
  enum class ReadResult : uint8_t { kGot, kAgain, kEof, kFull, kError };
  enum class Step : uint8_t { kContinue, kWait, kHandedOff };

  void drive() noexcept;
  Step step_read_head() noexcept;
  bool take_proxy_header() noexcept;  // false: not complete yet; closes on a bad header
  Step step_read_body() noexcept;
  bool wants_body_first() noexcept;
  bool step_discard() noexcept;
  bool begin_exchange(size_t head_len) noexcept;
  void after_response() noexcept;
  void reject(ParseError e) noexcept;
  void write_simple(int status, std::string_view body, std::string_view extra = {}) noexcept;
  ReadResult read_some() noexcept;
  bool decode_body() noexcept;  // refills cur_ from buffered bytes; false if none buffered
  bool flush() noexcept;        // true when everything queued went out
  bool flush_blocking() noexcept;
  bool wait_fd(short events, int64_t timeout_ms) noexcept;
  WriteStatus after_queue() noexcept;
  WriteStatus queue_status() noexcept;
  bool send_continue(bool block) noexcept;
  void kick() noexcept;
  void log_access() noexcept;
  // Keeps the values of the response headers the access-log format names (%({name}o)s).
  void capture_response_headers(const Header* headers, size_t n) noexcept;
  void arm_timer_for_state() noexcept;
  void release_buffers() noexcept;
  void ensure_in() noexcept;
  void ensure_out() noexcept;
  bool out_pending() const noexcept { return (out_ && !out_->empty()) || file_left_ > 0; }
  // Queues head + data + tail as one piece of output; large data goes out with writev from the
  // caller's memory and only what the socket did not take is copied.
  WriteStatus queue_parts(std::string_view head, const char* data, size_t n,
                          std::string_view tail) noexcept;

  // ---- WebSocket (connection_ws.cpp) ----
  struct WsState;
  bool check_upgrade() noexcept;  // in begin_exchange: false if the handshake was refused
  bool step_ws() noexcept;        // kWebSocket: true to run the state machine again
  bool ws_feed() noexcept;        // parses buffered frames; true if the state changed
  void ws_control(const void* result) noexcept;
  void ws_fail(uint16_t code, std::string_view reason, bool tell_app, bool wait_for_peer) noexcept;
  void ws_queue_control(uint8_t opcode, std::string_view payload) noexcept;
  void ws_timer(net::TimerList* which) noexcept;
  void arm_ws_timer(int64_t now) noexcept;
  void ws_app_done() noexcept;
  void ws_deliver(bool binary, std::string_view data) noexcept;
  void ws_deliver_masked(char* data, size_t n, size_t phase) noexcept;
  bool ws_inflate(std::string_view piece, bool message_end, bool binary) noexcept;
  bool ws_gather(std::string_view piece) noexcept;

  Server* server_;
  int fd_ = -1;
  State state_ = State::kClosed;
  std::atomic<bool> lent_{false};        // read by the loop thread while a pool thread owns us
  std::atomic<uint32_t> missed_events_{0};
  bool readable_ = false;    // edge-triggered: the socket may have unread bytes
  bool peer_eof_ = false;    // read() returned 0
  bool failed_ = false;      // a write failed or the app aborted: close when control returns
  bool paused_ = false;      // inline mode: producer waits for on_resume
  bool blocking_ = false;    // pool mode: writes wait instead of pausing
  bool detached_ = false;    // an async app owns the exchange and finishes it later
  bool want_body_ = false;   // detached: call on_body_ready() when body_peek() has news
  bool disconnect_told_ = false;  // detached: on_disconnect() was called
  bool in_drive_ = false;    // inside drive(): app calls need no deferral
  bool deferred_ = false;    // queued on the server's deferred list
  bool corked_ = false;      // queued on the server's corked list (Server::cork)
  bool is_unix_ = false;
  bool ws_request_ = false;  // this exchange is a valid WebSocket upgrade request
  bool proxy_pending_ = false;  // --proxy-protocol: the PROXY header has not been read yet
  bool trusted_peer_ = false;   // --proxy-headers: the socket's peer is in --forwarded-allow-ips
  ForwardedInfo fwd_;           // this request's proxy headers (when trusted_peer_)
  int listener_ = 0;
  int port_ = 0;
  uint8_t addr_len_ = 0;
  char addr_text_[46] = {};  // INET6_ADDRSTRLEN

  std::unique_ptr<base::Buffer> in_;   // pooled; holds the head (kept in place) and body bytes
  std::unique_ptr<base::Buffer> out_;  // pooled; queued response bytes
  std::vector<Header> headers_;        // parser output storage, sized by limits.max_fields
  Request req_;
  size_t scan_from_ = 0;
  size_t head_len_ = 0;

  // Request body state.
  ChunkedDecoder chunked_;
  ChunkedDecoder probe_;        // inline mode: finds the end of a chunked body before dispatch
  size_t probe_pos_ = 0;
  size_t body_pos_ = 0;         // offset in in_ of bytes not yet decoded
  size_t cur_off_ = 0;          // decoded body bytes awaiting consumption: [cur_off_, +cur_len_)
  size_t cur_len_ = 0;
  uint64_t body_left_ = 0;      // Content-Length bodies: bytes still to come
  bool body_done_ = true;
  uint64_t discard_left_ = 0;   // kDiscardBody: bytes we still accept to drop
  bool continue_pending_ = false;
  bool progress_ = false;       // bytes moved in the awaited direction since the timer was armed
  uint64_t body_received_ = 0;  // body bytes read from the socket for this request
  int64_t body_wait_ms_ = 0;    // inline mode: time the loop spent blocked on this body  // "Expect: 100-continue" and no 100 sent yet
  BodyError body_error_ = BodyError::kNone;

  // Response state.
  bool started_ = false;
  bool finished_ = false;
  bool keep_alive_ = true;
  bool chunked_out_ = false;
  bool no_body_ = false;        // HEAD, 1xx, 204, 304
  bool file_crlf_ = false;      // a chunk of file data needs its closing CRLF once sent
  int status_ = 0;
  int64_t declared_len_ = -1;   // the app's Content-Length, -1 if none
  uint64_t sent_ = 0;           // body bytes accepted from the app (after clamping)
  int file_fd_ = -1;            // borrowed from the app's file object while file_left_ > 0
  int64_t file_off_ = 0;
  int64_t file_left_ = 0;

  // Access log: only what the compiled format asks for is measured or kept.
  int64_t req_start_us_ = 0;  // CLOCK_MONOTONIC when the head was complete (%(D)s and friends)
  static constexpr size_t kCaptureBytes = 512;  // a logged response header value is cut here
  static constexpr uint16_t kNotCaptured = 0xffff;
  // kMaxResponseHeaders slots of kCaptureBytes, allocated once per Connection object (they are
  // recycled), only when the format logs response headers.
  std::unique_ptr<char[]> resp_cap_;
  uint16_t resp_cap_len_[AccessFormat::kMaxResponseHeaders] = {};

  std::unique_ptr<WsState> ws_;  // only while upgraded
};

// The state of an upgraded connection (connection_ws.cpp), allocated at the 101.
struct Connection::WsState {
  explicit WsState(const ws::FrameOptions& options) : parser(options) {}
  ws::FrameParser parser;
  std::string msg;             // the message being gathered (see the file comment)
  size_t pos = 0;              // offset in in_ of bytes not yet fed to the parser
  uint32_t pings = 0;          // our pings so far: the payload of the next one
  bool want = false;           // the app has room for messages: read and parse
  bool close_sent = false;     // our close frame is queued: no more data frames either way
  bool told = false;           // the app knows the connection is closing (on_ws_closed or its own close)
  bool awaiting_pong = false;  // a keep-alive ping is out
  bool deflate = false;        // permessage-deflate was negotiated
  ws::DeflateParams deflate_params;
  std::optional<ws::Inflater> inflater;  // with deflate: the client's compressed messages
  ws::Utf8Validator utf8;      // inflated text messages (the parser checks uncompressed ones)
};

}  // namespace fulmen::http1
