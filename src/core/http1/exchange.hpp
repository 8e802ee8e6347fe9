// The app-facing side of one request/response on an HTTP/1.1 connection. The bridge (WSGI now,
// ASGI later) sees only this: the parsed request, a body to pull from, and a response to push.
// Everything here runs on the thread that currently owns the connection (the loop thread, or a
// pool thread the connection is lent to), so nothing here locks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/http1/forwarded.hpp"
#include "core/http1/parser.hpp"
#include "core/ws/frame.hpp"

namespace fulmen::http1 {

class Exchange {
 public:
  enum class BodyStatus : uint8_t {
    kData,        // *out holds body bytes; call body_consume() for what you used
    kEof,         // the body is complete
    kWouldBlock,  // only when !block: nothing buffered yet
    kError,       // malformed body, client gone or timed out: body_error() says which
  };
  enum class BodyError : uint8_t { kNone, kMalformed, kTooLarge, kDisconnected, kTimeout };
  enum class WriteStatus : uint8_t {
    kOk,     // accepted (sent or queued)
    kPause,  // accepted, but the queue is over the high watermark: stop producing until on_resume
    kError,  // the connection is gone; stop producing and call finish() or abort()
  };
  enum class StartError : uint8_t { kNone, kAlreadyStarted, kBadStatus, kBadHeader };

  virtual ~Exchange() = default;

  virtual const Request& request() const noexcept = 0;
  virtual std::string_view remote_addr() const noexcept = 0;  // "" for unix sockets
  virtual int remote_port() const noexcept = 0;               // 0 for unix sockets
  virtual int listener_index() const noexcept = 0;
  // --proxy-headers: what a trusted proxy's headers say about this request (views into the head),
  // or null when the peer is not trusted or the headers say nothing (or are malformed).
  virtual const ForwardedInfo* forwarded() const noexcept { return nullptr; }

  // Body: a view of the next decoded body bytes. block=true waits (poll, GIL released through the
  // server's block hooks) up to the body timeout; the first wait sends "100 Continue" if expected.
  virtual BodyStatus body_peek(std::string_view* out, bool block) noexcept = 0;
  virtual void body_consume(size_t n) noexcept = 0;
  virtual BodyError body_error() const noexcept = 0;
  // Every body byte was handed out and consumed (true at once for requests without a body).
  virtual bool body_finished() const noexcept = 0;

  // Response. Headers are validated (no CR/LF/NUL, token names); hop-by-hop ones are handled by
  // the engine: Connection/Keep-Alive/Transfer-Encoding from the app are dropped (Connection:
  // close is honoured). Content-Length, if given, is enforced: extra bytes are dropped and a short
  // body closes the connection. Without it, HTTP/1.1 gets chunked, HTTP/1.0 a close-delimited body.
  virtual StartError start_response(int status, std::string_view reason, const Header* headers,
                                    size_t n) noexcept = 0;
  virtual WriteStatus write(const char* data, size_t n) noexcept = 0;
  // After a kPause, for producers that cannot be suspended (WSGI's write()): blocks until the
  // queue drained. False if the connection failed.
  virtual bool wait_drained() noexcept = 0;
  // Sends count bytes of fd from offset (sendfile). count < 0: to the end of the file.
  virtual WriteStatus send_file(int fd, int64_t offset, int64_t count) noexcept = 0;
  // The response is complete. Returns false if the connection had to be closed.
  virtual bool finish() noexcept = 0;
  // Something went wrong after the response started: close the connection.
  virtual void abort() noexcept = 0;
  virtual bool response_started() const noexcept = 0;
  // Sends a complete error response (status, plain-text body) if nothing was sent yet.
  virtual void send_simple(int status, std::string_view body, bool close) noexcept = 0;

  // ---- for asynchronous apps (ASGI), all on the loop thread ----
  // Called in on_request: the app keeps the exchange and finishes it later (from its own task),
  // instead of finishing or pausing before on_request returns.
  virtual void detach() noexcept = 0;
  // While on, the engine reads the socket for this exchange and calls
  // AppHandler::on_body_ready() once body_peek(block=false) has something other than kWouldBlock
  // (data, the end, or an error); the flag is cleared before the call. The handler must consume
  // what it was given (or turn the flag off) before asking again.
  virtual void want_body(bool on) noexcept = 0;
  // The client has gone (EOF, reset): AppHandler::on_disconnect() was or is about to be called.
  virtual bool peer_gone() const noexcept = 0;

  // ---- WebSocket (RFC 6455), for asynchronous apps, all on the loop thread ----
  // The request is a valid WebSocket opening handshake and the server speaks WebSocket: the
  // bridge runs the app with a websocket scope. (An invalid handshake never reaches the app: the
  // engine answers 400 or 426 itself.) Until ws_accept() the exchange is an HTTP exchange, so a
  // denial is an ordinary response (start_response/write/finish, or send_simple).
  virtual bool is_websocket() const noexcept = 0;
  // The subprotocols the client offered (Sec-WebSocket-Protocol), in order: up to `max` views
  // into the request head, valid until ws_accept(). Returns how many there are.
  virtual size_t ws_subprotocols(std::string_view* out, size_t max) const noexcept = 0;
  // Sends the 101 answer with the chosen subprotocol (empty: none; must be a token) and the
  // app's extra headers (validated as in start_response), negotiating permessage-deflate if the
  // server allows it. From then on the exchange carries messages. kBadHeader leaves nothing sent.
  virtual StartError ws_accept(std::string_view subprotocol, const Header* headers,
                               size_t n) noexcept = 0;
  // One whole message. kPause as for write(): stop sending until on_resume().
  virtual WriteStatus ws_send(bool binary, const char* data, size_t n) noexcept = 0;
  // Starts the closing handshake; the app gets no more messages. The code must satisfy
  // ws::close_code_valid; the reason is cut to what fits in a close frame.
  virtual void ws_close(uint16_t code, std::string_view reason) noexcept = 0;
  // While on, the engine reads frames and calls AppHandler::on_ws_message() for each whole
  // message (control frames are its own business); while off it does not read the socket at
  // all, so a slow app makes the client wait (TCP flow control) instead of queueing.
  virtual void ws_want(bool on) noexcept = 0;

  void* app_state = nullptr;  // the bridge's per-exchange state while a response is paused
};

// Implemented by the bridge. Called on the thread that owns the connection.
class AppHandler {
 public:
  virtual ~AppHandler() = default;
  // A request head arrived. The handler either completes the response (finish/abort) before
  // returning, or returns after a write said kPause, keeping its state in ex.app_state.
  virtual void on_request(Exchange& ex) noexcept = 0;
  // The output drained after a kPause: continue producing.
  virtual void on_resume(Exchange& ex) noexcept = 0;
  // The connection died while paused or detached: release ex.app_state; the exchange is dead
  // after this returns.
  virtual void on_abort(Exchange& ex) noexcept = 0;
  // Detached exchanges only: see Exchange::want_body().
  virtual void on_body_ready(Exchange& ex) noexcept {}
  // Detached exchanges only: the client went away (EOF or error) before the exchange finished.
  // Called once; the exchange stays valid until the app finishes or aborts it (writes then fail).
  virtual void on_disconnect(Exchange& ex) noexcept {}
  // WebSocket: a whole message (text is valid UTF-8); `data` is valid only during the call.
  virtual void on_ws_message(Exchange& ex, bool binary, std::string_view data) noexcept {}
  // WebSocket: a whole binary message that arrived in one piece, still masked by the client
  // with `key` from byte `phase` on. A handler that copies messages out anyway should override
  // this and copy with ws::copy_unmasked: one pass over the bytes instead of unmask-then-copy.
  // `data` is valid only during the call and may be changed. The default unmasks in place.
  virtual void on_ws_masked_message(Exchange& ex, char* data, size_t n, const uint8_t key[4],
                                    size_t phase) noexcept {
    ws::apply_mask(data, n, key, phase);
    on_ws_message(ex, true, std::string_view(data, n));
  }
  // WebSocket: the connection is closing for a reason other than the app's ws_close(): the
  // client's close frame (its code, or 1005, and reason), a protocol error or a ping timeout
  // (the code sent to the client), a lost connection (1006), or a server shutdown (1012).
  // Called once; every message that arrived before it was delivered first. As after
  // on_disconnect(), the exchange stays valid until the app calls finish() or abort(), and the
  // engine finishes the closing handshake on its own.
  virtual void on_ws_closed(Exchange& ex, uint16_t code, std::string_view reason) noexcept {}
};

}  // namespace fulmen::http1
