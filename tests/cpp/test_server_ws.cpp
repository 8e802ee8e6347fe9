// The engine's WebSocket path end to end, without Python: real loopback sockets, a client that
// masks its frames, and an app that plays an ASGI bridge on the test event loop (async_support.hpp:
// one thread owns the Server and runs app tasks between steps, as asyncio would).
//
// What is checked is the contract in core/http1/exchange.hpp: the handshake the engine answers
// (and the ones it refuses without the app), messages whole and in order whatever the framing and
// the split of the input, flow control both ways (ws_want, kPause/on_resume), every way a
// connection closes (client, app, protocol error, lost peer, ping timeout, shutdown, close
// timeout), and the steady-state costs (no allocation per message, buffers back in the pools and
// a small footprint while idle).
//
// Every wait has a deadline and ends on an event; the few "nothing happens" checks wait a bounded
// time for something that must not come.

#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "alloc_counter.hpp"
#include "async_support.hpp"
#include "core/http1/connection.hpp"
#include "core/server.hpp"
#include "core/ws/frame.hpp"
#include "server_support.hpp"

namespace fulmen {
namespace {

using namespace fulmen::test;
using http1::Exchange;
using http1::Header;
using WriteStatus = Exchange::WriteStatus;
using ws::Opcode;

// ---- the client's side: frames ----------------------------------------------------------------

// The example of RFC 6455 1.3, so the expected Sec-WebSocket-Accept is a published constant
// rather than something the test computes with the engine's own code.
constexpr std::string_view kKey = "dGhlIHNhbXBsZSBub25jZQ==";
constexpr std::string_view kAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

std::string upgrade_request(std::string_view extra = "", std::string_view version = "13",
                            std::string_view key = kKey) {
  std::string s = "GET /chat?room=1 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
  // An empty key or version leaves the field out.
  if (!key.empty()) s += "Sec-WebSocket-Key: " + std::string(key) + "\r\n";
  if (!version.empty()) s += "Sec-WebSocket-Version: " + std::string(version) + "\r\n";
  s += extra;
  s += "\r\n";
  return s;
}

// A client frame: masked (RFC 6455 5.3) with a key that changes from frame to frame, so a server
// that ignored the key or reused the previous one would garble the payload.
std::string frame(Opcode op, std::string_view payload, bool fin = true, bool masked = true) {
  static uint32_t seed = 0x9e3779b9;
  ws::FrameHead h = ws::make_frame_header(op, payload.size(), fin);
  std::string out(h.bytes, h.size);
  if (!masked) return out + std::string(payload);
  out[1] = char(uint8_t(out[1]) | 0x80);
  seed = seed * 1664525u + 1013904223u;
  uint8_t key[4] = {uint8_t(seed >> 24), uint8_t(seed >> 16), uint8_t(seed >> 8), uint8_t(seed)};
  out.append(reinterpret_cast<const char*>(key), 4);
  size_t at = out.size();
  out.append(payload);
  ws::apply_mask(out.data() + at, payload.size(), key);
  return out;
}
std::string text(std::string_view s) { return frame(Opcode::kText, s); }
std::string binary(std::string_view s) { return frame(Opcode::kBinary, s); }
std::string close_payload(uint16_t code, std::string_view reason = "") {
  std::string p{char(code >> 8), char(code & 0xff)};
  return p + std::string(reason);
}
std::string close_frame(uint16_t code, std::string_view reason = "") {
  return frame(Opcode::kClose, close_payload(code, reason));
}

// A server frame as the client read it.
struct Frame {
  bool ok = false;
  std::string error;
  bool fin = false;
  bool masked = false;
  uint8_t rsv = 0;
  uint8_t opcode = 0;
  std::string payload;

  uint16_t close_code() const {
    if (payload.size() < 2) return ws::close_code::kNoStatus;
    return uint16_t((uint8_t(payload[0]) << 8) | uint8_t(payload[1]));
  }
  std::string close_reason() const { return payload.size() > 2 ? payload.substr(2) : std::string(); }
  bool is(Opcode op) const { return ok && opcode == uint8_t(op); }
};

std::ostream& operator<<(std::ostream& o, const Frame& f) {
  o << "Frame{ok=" << f.ok << " error=\"" << f.error << "\" fin=" << f.fin << " opcode=" << int(f.opcode)
    << " masked=" << f.masked << " size=" << f.payload.size();
  if (f.opcode == uint8_t(Opcode::kClose)) o << " code=" << f.close_code() << " reason=\"" << f.close_reason() << "\"";
  else o << " payload=\"" << f.payload.substr(0, 60) << "\"";
  return o << "}";
}

// The next frame the server sent, read whole within timeout_ms.
Frame read_frame(Client& c, int timeout_ms = 5000) {
  Frame f;
  int64_t deadline = mono_ms() + timeout_ms;
  std::string& b = c.pending();
  auto need = [&](size_t n) {
    while (b.size() < n) {
      if (c.eof()) return f.error = "eof", false;
      int64_t left = deadline - mono_ms();
      if (left <= 0 || !c.read_more(int(left))) return f.error = "timeout", false;
    }
    return true;
  };
  if (!need(2)) return f;
  uint8_t b0 = uint8_t(b[0]), b1 = uint8_t(b[1]);
  f.fin = b0 & 0x80;
  f.rsv = (b0 >> 4) & 0x7;
  f.opcode = b0 & 0xf;
  f.masked = b1 & 0x80;
  uint64_t len = b1 & 0x7f;
  size_t head = 2;
  if (len >= 126) {
    size_t ext = len == 126 ? 2 : 8;
    if (!need(2 + ext)) return f;
    len = 0;
    for (size_t i = 0; i < ext; ++i) len = (len << 8) | uint8_t(b[2 + i]);
    head += ext;
  }
  if (f.masked) head += 4;  // a server must not mask: reported, and the payload left masked
  if (!need(head + len)) return f;
  f.payload = b.substr(head, size_t(len));
  b.erase(0, head + size_t(len));
  f.ok = true;
  return f;
}

// The server's close frame, then the end of the TCP connection (RFC 6455 7.1.1: the server closes
// first). Skips pings, which a keep-alive timer may send at any time.
::testing::AssertionResult closed_with(Client& c, uint16_t code, int timeout_ms = 3000) {
  Frame f;
  do f = read_frame(c, timeout_ms); while (f.is(Opcode::kPing));
  if (!f.is(Opcode::kClose)) return ::testing::AssertionFailure() << "expected close " << code << ", got " << f;
  if (f.close_code() != code) return ::testing::AssertionFailure() << "expected close " << code << ", got " << f;
  return ::testing::AssertionSuccess();
}
::testing::AssertionResult eof_next(Client& c, int timeout_ms = 3000) {
  if (!c.wait_closed(timeout_ms)) return ::testing::AssertionFailure() << "the server did not close the connection";
  if (!c.pending().empty())
    return ::testing::AssertionFailure() << c.pending().size() << " unexpected bytes before the end";
  return ::testing::AssertionSuccess();
}

// ---- the app ---------------------------------------------------------------------------------

// The app's per-exchange state (ex.app_state), like an ASGI bridge's per-connection object.
struct WsJob {
  Exchange* ex = nullptr;  // null once the app finished it or the engine called on_abort
  bool websocket = false;  // is_websocket() in on_request
  std::string target;
  std::vector<std::string> offered;  // ws_subprotocols(), copied in on_request
  Exchange::StartError accept_result = Exchange::StartError::kNone;
  std::vector<std::pair<bool, std::string>> messages;  // with WsApp::record
  std::vector<std::string> events;                      // with WsApp::record: the order of calls
  uint64_t message_count = 0;
  int closed_calls = 0, aborts = 0, resumes = 0, pauses = 0, disconnects = 0;
  uint16_t close_code = 0;
  std::string close_reason;
  bool waiting_resume = false;
  // The producer (produce()): total bytes as messages of `chunk`, pattern() continued across them.
  uint64_t send_total = 0, send_sent = 0;
  size_t send_chunk = 0;
  WriteStatus last_send = WriteStatus::kOk;
};

class WsApp : public http1::AppHandler {
 public:
  // What the app does with a WebSocket request (in a task after on_request, as an ASGI app's
  // accept() would be).
  enum class Open { kAccept, kAcceptNoWant, kDeny, kManual };

  EventLoop* loop = nullptr;  // set by EventLoop's constructor
  // Behaviour, set before the EventLoop starts (or from loop tasks).
  Open open = Open::kAccept;
  std::string subprotocol;
  std::vector<std::pair<std::string, std::string>> accept_headers;
  bool echo = true;             // ws_send every message back, from inside on_ws_message
  bool echo_from_task = false;  // ... or from a later task, as an ASGI send() would (copies)
  bool record = true;           // keep copies of messages and events (allocates)
  bool finish_on_close = true;  // finish() in a task after on_ws_closed, as an ASGI app returns
  uint64_t hold_after = 0;      // >0: ws_want(false) inside on_ws_message after this many messages

  std::atomic<int> requests{0}, accepted{0}, messages{0}, closed{0}, aborts{0}, resumes{0},
      pauses{0}, finished{0}, errors{0};
  std::vector<std::unique_ptr<WsJob>> jobs;  // loop thread
  std::vector<std::string> error_notes;      // loop thread

  // ---- AppHandler ----
  void on_request(Exchange& ex) noexcept override {
    jobs.push_back(std::make_unique<WsJob>());
    WsJob* j = jobs.back().get();
    j->ex = &ex;
    ex.app_state = j;
    ex.detach();
    j->websocket = ex.is_websocket();
    j->target.assign(ex.request().target);
    if (j->websocket) {
      std::string_view offered[ws::kMaxSubprotocols];
      size_t n = ex.ws_subprotocols(offered, ws::kMaxSubprotocols);
      for (size_t i = 0; i < n; ++i) j->offered.emplace_back(offered[i]);
    }
    requests.fetch_add(1);
    if (!j->websocket) {
      loop->soon([this, j] { reply_plain(*j); });
      return;
    }
    switch (open) {
      case Open::kAccept:
      case Open::kAcceptNoWant:
        loop->soon([this, j, want = open == Open::kAccept] { accept(*j, want); });
        break;
      case Open::kDeny:
        loop->soon([this, j] {
          if (!j->ex) return;
          j->ex->send_simple(403, "denied\n", false);
          done(*j);
        });
        break;
      case Open::kManual:
        break;
    }
  }

  void on_resume(Exchange& ex) noexcept override {
    WsJob* j = job(ex, "on_resume");
    if (!j) return;
    ++j->resumes;
    resumes.fetch_add(1);
    if (!j->waiting_resume) note("on_resume while not paused");
    j->waiting_resume = false;
    if (j->send_sent < j->send_total) {
      loop->soon([this, j] { produce(*j); });
    } else {
      ex.ws_want(true);  // an echo that paused: take messages again
    }
  }

  void on_abort(Exchange& ex) noexcept override {
    WsJob* j = job(ex, "on_abort");
    ex.app_state = nullptr;
    if (!j) return;
    ++j->aborts;
    if (record) j->events.push_back("abort");
    j->ex = nullptr;  // dead now
    aborts.fetch_add(1);
  }

  void on_disconnect(Exchange& ex) noexcept override {
    // WebSocket exchanges hear of a lost peer through on_ws_closed(1006), not this.
    if (WsJob* j = job(ex, "on_disconnect")) {
      ++j->disconnects;
      if (j->websocket) note("on_disconnect for a WebSocket exchange");
    }
  }

  void on_ws_message(Exchange& ex, bool is_binary, std::string_view data) noexcept override {
    auto* j = static_cast<WsJob*>(ex.app_state);
    if (!j) return note("on_ws_message without app state");  // (allocates only on failure)
    ++j->message_count;
    // Counted before the echo goes out, so a test that saw the echo sees the count.
    messages.fetch_add(1);
    if (j->closed_calls) note("on_ws_message after on_ws_closed");
    if (record) {
      j->messages.emplace_back(is_binary, std::string(data));
      j->events.push_back("msg");
    }
    if (echo && echo_from_task) {
      loop->soon([j, is_binary, copy = std::string(data)] {
        if (j->ex) j->ex->ws_send(is_binary, copy.data(), copy.size());
      });
    } else if (echo) {
      // Straight from the engine's view: nothing copied, nothing allocated.
      WriteStatus s = ex.ws_send(is_binary, data.data(), data.size());
      if (s == WriteStatus::kPause) {
        // An ASGI send() would now await the drain: take no more messages until on_resume.
        ex.ws_want(false);
        j->waiting_resume = true;
        ++j->pauses;
        pauses.fetch_add(1);
      }
    }
    if (hold_after && j->message_count == hold_after) ex.ws_want(false);
  }

  void on_ws_closed(Exchange& ex, uint16_t code, std::string_view reason) noexcept override {
    WsJob* j = job(ex, "on_ws_closed");
    if (!j) return;
    ++j->closed_calls;
    j->close_code = code;
    j->close_reason.assign(reason);
    if (record) j->events.push_back("closed:" + std::to_string(code));
    if (finish_on_close) loop->soon([this, j] { finish(*j); });
    closed.fetch_add(1);
  }

  // ---- the app's actions (loop thread) ----
  void accept(WsJob& j, bool want) {
    if (!j.ex) return;
    std::vector<Header> hs;
    for (auto& [k, v] : accept_headers) hs.push_back({k, v});
    j.accept_result = j.ex->ws_accept(subprotocol, hs.data(), hs.size());
    if (record) j.events.push_back("accept");
    if (j.accept_result == Exchange::StartError::kNone) {
      if (want) j.ex->ws_want(true);
      accepted.fetch_add(1);
    }
  }
  void finish(WsJob& j) {
    if (!j.ex) return;
    j.ex->finish();
    done(j);
  }
  void abort(WsJob& j) {
    if (!j.ex) return;
    j.ex->abort();
    done(j);
  }
  // Sends send_total bytes as binary messages until kPause; on_resume continues.
  void produce(WsJob& j) {
    std::string buf(j.send_chunk, '\0');
    while (j.ex && j.send_sent < j.send_total) {
      size_t n = size_t(std::min<uint64_t>(j.send_chunk, j.send_total - j.send_sent));
      for (size_t i = 0; i < n; ++i) buf[i] = pattern(j.send_sent + i);
      j.last_send = j.ex->ws_send(true, buf.data(), n);
      if (j.last_send == WriteStatus::kError) return note("ws_send failed while producing");
      j.send_sent += n;  // accepted, even on kPause
      if (j.last_send == WriteStatus::kPause) {
        j.waiting_resume = true;
        ++j.pauses;
        pauses.fetch_add(1);
        return;
      }
    }
  }
  std::vector<std::string> take_errors() { return error_notes; }

 private:
  void reply_plain(WsJob& j) {
    if (!j.ex) return;
    std::string body = "plain " + j.target;
    std::string len = std::to_string(body.size());
    Header h[] = {{"Content-Length", len}};
    j.ex->start_response(200, "", h, 1);
    j.ex->write(body.data(), body.size());
    finish(j);
  }
  void done(WsJob& j) {
    j.ex->app_state = nullptr;
    j.ex = nullptr;
    finished.fetch_add(1);
  }
  WsJob* job(Exchange& ex, const char* what) {
    auto* j = static_cast<WsJob*>(ex.app_state);
    if (!j) note(std::string(what) + " for an exchange without app state");
    return j;
  }
  void note(std::string what) {
    error_notes.push_back(std::move(what));
    errors.fetch_add(1);
  }
};

ServerConfig ws_config() {
  ServerConfig c = test_config();
  c.exit_watchdog = false;  // a hung test is ctest's to time out, not a reason to _exit()
  c.websocket = true;
  c.ws_ping_interval_ms = 0;  // pings only where a test asks for them
  c.ws_deflate = false;       // frames on the wire exactly as sent
  return c;
}

constexpr int kSmallBuf = 4096;

// The app saw the engine keep its contract (WsApp notes every breach; listed on failure).
::testing::AssertionResult no_app_errors(EventLoop& loop, WsApp& app) {
  if (app.errors.load() == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "app errors: " << ::testing::PrintToString(on_loop(loop, [&] { return app.take_errors(); }));
}

template <class F>
bool wait_for(EventLoop& loop, F pred, int timeout_ms = 5000) {
  return loop.wait([&](const ServerStats&) { return pred(); }, timeout_ms);
}

// A copy of job i, taken on the loop thread (the exchange pointer is not copied).
WsJob job_copy(EventLoop& loop, WsApp& app, size_t i = 0) {
  return on_loop(loop, [&] {
    if (i >= app.jobs.size()) return WsJob();
    WsJob c = *app.jobs[i];
    c.ex = nullptr;
    return c;
  });
}

// Sends the handshake and reads the 101; the client is then ready for frames.
::testing::AssertionResult open_ws(Client& c, std::string_view extra = "", std::string_view then = "") {
  if (!c.connected()) return ::testing::AssertionFailure() << "not connected";
  if (!c.send(upgrade_request(extra) + std::string(then))) return ::testing::AssertionFailure() << "send failed";
  Response r = c.read_response();
  if (!r.ok || r.status != 101) return ::testing::AssertionFailure() << "no 101: " << r;
  if (r.header("Sec-WebSocket-Accept") != kAccept) return ::testing::AssertionFailure() << "bad accept";
  return ::testing::AssertionSuccess();
}

// ---- the opening handshake ------------------------------------------------------------------

TEST(WsHandshake, AcceptAnswers101WithTheAcceptKeyTheSubprotocolAndTheAppsHeaders) {
  WsApp app;
  app.subprotocol = "chat";
  app.accept_headers = {{"X-Extra", "yes"}, {"Connection", "close"}, {"Upgrade", "h2c"},
                        {"Content-Length", "5"}, {"Set-Cookie", "a=b"}};
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(upgrade_request(
      "Sec-WebSocket-Protocol: superchat, chat\r\nSec-WebSocket-Protocol: v2.json\r\n")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 101);
  EXPECT_EQ(r.header("Sec-WebSocket-Accept"), kAccept);
  EXPECT_EQ(r.header("Sec-WebSocket-Protocol"), "chat");
  EXPECT_EQ(r.header("X-Extra"), "yes");
  EXPECT_EQ(r.header("Set-Cookie"), "a=b");
  EXPECT_FALSE(r.has("Content-Length"));
  // The handshake's own fields appear once, the engine's: the app's Connection/Upgrade are dropped.
  int connection = 0, upgrade = 0;
  for (auto& [k, v] : r.headers) {
    if (strcasecmp(k.c_str(), "connection") == 0) {
      ++connection;
      EXPECT_EQ(v, "Upgrade");
    }
    if (strcasecmp(k.c_str(), "upgrade") == 0) {
      ++upgrade;
      EXPECT_EQ(v, "websocket");
    }
  }
  EXPECT_EQ(connection, 1);
  EXPECT_EQ(upgrade, 1);

  WsJob j = job_copy(loop, app);
  EXPECT_TRUE(j.websocket);
  EXPECT_EQ(j.target, "/chat?room=1");
  EXPECT_EQ(j.offered, (std::vector<std::string>{"superchat", "chat", "v2.json"}));
  EXPECT_EQ(j.accept_result, Exchange::StartError::kNone);
  // And the upgraded connection carries messages.
  ASSERT_TRUE(c.send(text("hi")));
  Frame f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kText)) << f;
  EXPECT_EQ(f.payload, "hi");
  EXPECT_TRUE(f.fin);
  EXPECT_FALSE(f.masked);
  EXPECT_EQ(f.rsv, 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsHandshake, BadSubprotocolOrHeaderFromTheAppIsRefusedAndNothingIsSent) {
  WsApp app;
  app.open = WsApp::Open::kManual;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(upgrade_request("Sec-WebSocket-Protocol: chat\r\n")));
  ASSERT_TRUE(wait_for(loop, [&] { return app.requests.load() == 1; }));
  auto results = on_loop(loop, [&] {
    Exchange& ex = *app.jobs[0]->ex;
    Header bad_value[] = {{"X-A", "a\r\nInjected: 1"}};
    Header bad_name[] = {{"X A", "1"}};
    return std::vector<Exchange::StartError>{ex.ws_accept("not a token", nullptr, 0),
                                             ex.ws_accept("chat", bad_value, 1),
                                             ex.ws_accept("chat", bad_name, 1)};
  });
  for (auto r : results) EXPECT_EQ(r, Exchange::StartError::kBadHeader);
  EXPECT_TRUE(c.quiet_for(50)) << "a refused ws_accept sent something";
  // The exchange is still an HTTP one: a proper accept afterwards works.
  ASSERT_TRUE(loop.call([&] { app.accept(*app.jobs[0], true); }));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok && r.status == 101) << r;
  EXPECT_FALSE(r.has("X-A"));
  ASSERT_TRUE(c.send(binary("ok")));
  EXPECT_EQ(read_frame(c).payload, "ok");
}

TEST(WsHandshake, InvalidHandshakesAreAnsweredByTheEngineAndNeverReachTheApp) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  struct Case {
    const char* name;
    std::string request;
    int status;
  };
  Case cases[] = {
      {"version 12", upgrade_request("", "12"), 426},
      {"no version", upgrade_request("", ""), 426},
      {"bad key", upgrade_request("", "13", "not-base64!"), 400},
      {"key of 15 bytes", upgrade_request("", "13", "AAAAAAAAAAAAAAAAAAAA"), 400},
      {"no key", upgrade_request("", "13", ""), 400},
      {"two keys", upgrade_request("Sec-WebSocket-Key: " + std::string(kKey) + "\r\n"), 400},
      {"bad subprotocol", upgrade_request("Sec-WebSocket-Protocol: a b\r\n"), 400},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    Client c(loop.port());
    ASSERT_TRUE(c.send(k.request));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.status, k.status) << r;
    if (k.status == 426) {
      EXPECT_EQ(r.header("Sec-WebSocket-Version"), "13");
    }
    EXPECT_FALSE(r.has("Sec-WebSocket-Accept"));
    EXPECT_TRUE(c.wait_closed(3000)) << "a refused handshake must close the connection";
  }
  EXPECT_EQ(app.requests.load(), 0);
  EXPECT_EQ(on_loop(loop, [&] { return app.jobs.size(); }), 0u);
}


TEST(WsHandshake, AHandshakeWithABodyIsRefusedWith400WithoutTheApp) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  std::string head = upgrade_request();
  head.resize(head.size() - 2);  // without the blank line
  for (std::string req : {head + "Content-Length: 5\r\n\r\nhello",
                          head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"}) {
    SCOPED_TRACE(req);
    Client c(loop.port());
    ASSERT_TRUE(c.send(req));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.status, 400) << r;
    EXPECT_FALSE(r.has("Sec-WebSocket-Accept"));
    EXPECT_TRUE(c.wait_closed(3000)) << "a refused handshake must close the connection";
  }
  EXPECT_EQ(app.requests.load(), 0);
}

TEST(WsHandshake, OtherUpgradesAndPlainRequestsAreHttpForTheApp) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send("GET /h2 HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "plain /h2");
  // A WebSocket handshake that is not a GET is no WebSocket handshake either.
  Client p(loop.port());
  std::string post_upgrade = upgrade_request();
  post_upgrade.replace(0, 3, "PUT");
  ASSERT_TRUE(p.send(post_upgrade));
  r = p.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  ASSERT_EQ(app.requests.load(), 2);
  EXPECT_FALSE(job_copy(loop, app, 0).websocket);
  EXPECT_FALSE(job_copy(loop, app, 1).websocket);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsHandshake, WithWebSocketOffAValidHandshakeIsAPlainRequest) {
  WsApp app;
  ServerConfig cfg = ws_config();
  cfg.websocket = false;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(upgrade_request()));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "plain /chat?room=1");
  WsJob j = job_copy(loop, app);
  EXPECT_FALSE(j.websocket);
  EXPECT_TRUE(j.offered.empty());
}

TEST(WsHandshake, DenialIsAnOrdinaryResponseAndClosesTheConnection) {
  WsApp app;
  app.open = WsApp::Open::kDeny;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(upgrade_request()));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(r.body, "denied\n");
  // The client may already have sent frames behind its handshake: the connection cannot go on.
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- messages ----------------------------------------------------------------------------------

class WsEchoSize : public ::testing::TestWithParam<size_t> {};

// Each length form (7-bit, 16-bit at 126 and 65535, 64-bit from 65536) both ways, and a message
// far larger than one read, gathered by the engine.
TEST_P(WsEchoSize, TextAndBinaryComeBackWhole) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  std::string body = pattern_string(GetParam());
  for (Opcode op : {Opcode::kText, Opcode::kBinary}) {
    ASSERT_TRUE(c.send(frame(op, body)));
    Frame f = read_frame(c);
    ASSERT_TRUE(f.is(op)) << f;
    EXPECT_TRUE(f.fin);
    EXPECT_EQ(f.payload.size(), body.size());
    EXPECT_TRUE(f.payload == body) << "payload differs";
  }
  WsJob j = job_copy(loop, app);
  ASSERT_EQ(j.messages.size(), 2u);
  EXPECT_FALSE(j.messages[0].first);
  EXPECT_TRUE(j.messages[1].first);
  EXPECT_TRUE(j.messages[0].second == body && j.messages[1].second == body);
  EXPECT_TRUE(no_app_errors(loop, app));
}

INSTANTIATE_TEST_SUITE_P(Ws, WsEchoSize, ::testing::Values(0, 125, 126, 65535, 65536, 1 << 20));

TEST(WsMessages, FragmentsAreJoinedAndAPingBetweenThemIsAnsweredFirst) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  ASSERT_TRUE(c.send(frame(Opcode::kText, "Hello, ", false) + frame(Opcode::kPing, "p1")));
  Frame pong = read_frame(c);
  ASSERT_TRUE(pong.is(Opcode::kPong)) << pong;
  EXPECT_EQ(pong.payload, "p1");
  EXPECT_EQ(app.messages.load(), 0) << "the message is not complete yet";
  ASSERT_TRUE(c.send(frame(Opcode::kContinuation, "frag", false)));
  ASSERT_TRUE(c.send(frame(Opcode::kContinuation, "", false) + frame(Opcode::kPing, "") +
                     frame(Opcode::kContinuation, "mented \xc3\xa9t\xc3\xa9", true)));
  pong = read_frame(c);
  ASSERT_TRUE(pong.is(Opcode::kPong)) << pong;
  EXPECT_EQ(pong.payload, "");
  Frame f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kText)) << f;
  EXPECT_EQ(f.payload, "Hello, fragmented \xc3\xa9t\xc3\xa9");

  // A UTF-8 character split across fragments is still valid text.
  ASSERT_TRUE(c.send(frame(Opcode::kText, "\xe2\x82", false) + frame(Opcode::kContinuation, "\xac!", true)));
  f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kText)) << f;
  EXPECT_EQ(f.payload, "\xe2\x82\xac!");

  // A large binary message in uneven fragments, each larger than a read, pings between.
  std::string big = pattern_string(300000);
  std::string wire = frame(Opcode::kBinary, std::string_view(big).substr(0, 1), false) +
                     frame(Opcode::kPing, "a") +
                     frame(Opcode::kContinuation, std::string_view(big).substr(1, 150000), false) +
                     frame(Opcode::kPing, "b") +
                     frame(Opcode::kContinuation, std::string_view(big).substr(150001), true);
  ASSERT_TRUE(c.send(wire));
  Frame p1 = read_frame(c), p2 = read_frame(c);
  EXPECT_TRUE(p1.is(Opcode::kPong) && p1.payload == "a") << p1;
  EXPECT_TRUE(p2.is(Opcode::kPong) && p2.payload == "b") << p2;
  f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kBinary)) << f;
  EXPECT_TRUE(f.payload == big);
  EXPECT_TRUE(wait_for(loop, [&] { return app.messages.load() == 3; }));
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsMessages, ManyMessagesInOneWriteAreAllDeliveredInOrder) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  constexpr int kCount = 1000;
  std::vector<std::string> sent;
  std::string wire;
  for (int i = 0; i < kCount; ++i) {
    std::string m = std::to_string(i) + ":" + pattern_string(size_t(i * 37) % 300);
    wire += (i % 3 == 0) ? binary(m) : text(m);
    sent.push_back(std::move(m));
  }
  ASSERT_TRUE(c.send(wire));
  for (int i = 0; i < kCount; ++i) {
    Frame f = read_frame(c);
    ASSERT_TRUE(f.is(i % 3 == 0 ? Opcode::kBinary : Opcode::kText)) << i << ": " << f;
    ASSERT_EQ(f.payload, sent[size_t(i)]) << i;
  }
  WsJob j = job_copy(loop, app);
  ASSERT_EQ(j.messages.size(), size_t(kCount));
  for (int i = 0; i < kCount; ++i) ASSERT_EQ(j.messages[size_t(i)].second, sent[size_t(i)]) << i;
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsMessages, AMessageSentOneByteAtATimeArrivesWhole) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  // A 16-bit length, an empty frame, a fragmented message with a ping inside, a 2-byte close.
  std::string long_text = pattern_string(300);
  std::string wire = text(long_text) + binary("") + frame(Opcode::kText, "ab", false) +
                     frame(Opcode::kPing, "x") + frame(Opcode::kContinuation, "cd", true);
  for (char ch : wire) ASSERT_TRUE(c.send(std::string_view(&ch, 1)));
  Frame f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kText)) << f;
  EXPECT_EQ(f.payload, long_text);
  f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kBinary)) << f;
  EXPECT_EQ(f.payload, "");
  f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kPong)) << f;
  EXPECT_EQ(f.payload, "x");
  f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kText)) << f;
  EXPECT_EQ(f.payload, "abcd");
  std::string cl = close_frame(1000);
  for (char ch : cl) ASSERT_TRUE(c.send(std::string_view(&ch, 1)));
  EXPECT_TRUE(closed_with(c, 1000));
  EXPECT_TRUE(eof_next(c));
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsMessages, FramesBehindTheHandshakeInTheSameWriteAreDeliveredAfterAccept) {
  WsApp app;
  app.open = WsApp::Open::kManual;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(upgrade_request() + text("one") + binary("two") + text(pattern_string(1000))));
  ASSERT_TRUE(wait_for(loop, [&] { return app.requests.load() == 1; }));
  // The frames are already in the engine's buffer; none may reach the app before it accepts.
  EXPECT_FALSE(wait_for(loop, [&] { return app.messages.load() > 0; }, 100));
  ASSERT_TRUE(loop.call([&] { app.accept(*app.jobs[0], true); }));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok && r.status == 101) << r;
  EXPECT_EQ(read_frame(c).payload, "one");
  EXPECT_EQ(read_frame(c).payload, "two");
  EXPECT_EQ(read_frame(c).payload, pattern_string(1000));
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.events, (std::vector<std::string>{"accept", "msg", "msg", "msg"}));
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- flow control ----------------------------------------------------------------------------

TEST(WsFlow, WantOffInsideOnMessageStopsDeliveryOfBufferedMessagesUntilWantOn) {
  WsApp app;
  app.hold_after = 3;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  std::string wire;
  for (int i = 0; i < 10; ++i) wire += text("m" + std::to_string(i));
  ASSERT_TRUE(c.send(wire));  // all ten in one write: the engine has them all in its buffer
  ASSERT_TRUE(wait_for(loop, [&] { return app.messages.load() == 3; }));
  EXPECT_FALSE(wait_for(loop, [&] { return app.messages.load() > 3; }, 150));
  ASSERT_TRUE(loop.call([&] { app.jobs[0]->ex->ws_want(true); }));
  ASSERT_TRUE(wait_for(loop, [&] { return app.messages.load() == 10; }));
  WsJob j = job_copy(loop, app);
  ASSERT_EQ(j.messages.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(j.messages[size_t(i)].second, "m" + std::to_string(i));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(read_frame(c).payload, "m" + std::to_string(i));
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsFlow, WithoutWantTheEngineLeavesBytesInTheSocketAndTheClientStalls) {
  WsApp app;
  app.open = WsApp::Open::kAcceptNoWant;
  app.echo = false;  // the client does not read while it sends
  EventLoop loop(ws_config(), app, /*sndbuf=*/0, /*rcvbuf=*/kSmallBuf);
  Client c(loop.port(), /*rcvbuf=*/0, /*sndbuf=*/kSmallBuf);
  ASSERT_TRUE(open_ws(c));
  constexpr int kCount = 2000;
  std::string wire;
  for (int i = 0; i < kCount; ++i) wire += binary(std::to_string(i) + ":" + pattern_string(1000));
  size_t off = 0;
  // 2 MB cannot fit in two small socket buffers: if the engine read (and queued) regardless,
  // this would go through.
  EXPECT_FALSE(c.send_until_stall(wire, &off, 300)) << "everything went out: nothing pushed back";
  EXPECT_LT(off, wire.size());
  EXPECT_EQ(app.messages.load(), 0);
  ASSERT_TRUE(loop.call([&] { app.jobs[0]->ex->ws_want(true); }));
  ASSERT_TRUE(c.send_until_stall(wire, &off, 3000)) << "stalled at " << off;
  ASSERT_TRUE(wait_for(loop, [&] { return app.messages.load() == kCount; }));
  WsJob j = job_copy(loop, app);
  ASSERT_EQ(j.messages.size(), size_t(kCount));
  for (int i = 0; i < kCount; ++i)
    ASSERT_EQ(j.messages[size_t(i)].second, std::to_string(i) + ":" + pattern_string(1000)) << i;
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsFlow, LargeSendsToAClientThatDoesNotReadPauseThenResumeAndArriveInOrder) {
  WsApp app;
  app.open = WsApp::Open::kAccept;
  EventLoop loop(ws_config(), app, /*sndbuf=*/kSmallBuf);
  Client c(loop.port(), /*rcvbuf=*/kSmallBuf);
  ASSERT_TRUE(open_ws(c));
  constexpr uint64_t kTotal = 4u << 20;
  constexpr size_t kChunk = 96 * 1024;
  ASSERT_TRUE(loop.call([&] {
    WsJob& j = *app.jobs[0];
    j.send_total = kTotal;
    j.send_chunk = kChunk;
    app.produce(j);
  }));
  ASSERT_TRUE(wait_for(loop, [&] { return app.pauses.load() >= 1; }));
  EXPECT_EQ(app.resumes.load(), 0) << "resumed although the client read nothing";
  // Now read it all: every message whole, the bytes continuing across them.
  uint64_t got = 0;
  while (got < kTotal) {
    Frame f = read_frame(c, 5000);
    ASSERT_TRUE(f.is(Opcode::kBinary)) << "at " << got << ": " << f;
    ASSERT_EQ(f.payload.size(), size_t(std::min<uint64_t>(kChunk, kTotal - got)));
    ASSERT_TRUE(matches_pattern(f.payload, got)) << "message at " << got;
    got += f.payload.size();
  }
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.send_sent, kTotal);
  EXPECT_GE(j.resumes, 1);
  EXPECT_EQ(j.resumes, j.pauses);
  EXPECT_FALSE(j.waiting_resume);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsFlow, AnEchoToAClientThatDoesNotReadPausesTheAppAndResumes) {
  WsApp app;
  EventLoop loop(ws_config(), app, /*sndbuf=*/kSmallBuf);
  Client c(loop.port(), /*rcvbuf=*/kSmallBuf);
  ASSERT_TRUE(open_ws(c));
  // 16 x 64 KiB: the echoes pass the output watermark while the client is not reading.
  std::string m = pattern_string(64 * 1024);
  std::string wire;
  for (int i = 0; i < 16; ++i) wire += binary(m);
  size_t off = 0;
  c.send_until_stall(wire, &off, 300);
  ASSERT_TRUE(wait_for(loop, [&] { return app.pauses.load() >= 1; }));
  int before = app.messages.load();
  EXPECT_LT(before, 16);
  std::thread sender([&] { c.send_until_stall(wire, &off, 5000); });
  for (int i = 0; i < 16; ++i) {
    Frame f = read_frame(c);
    ASSERT_TRUE(f.is(Opcode::kBinary)) << i << ": " << f;
    ASSERT_TRUE(f.payload == m) << i;
  }
  sender.join();
  EXPECT_EQ(off, wire.size());
  EXPECT_GE(app.resumes.load(), 1);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// A client that stops reading while the app sends must not hold the connection (and the app's
// paused send) forever: with no progress for body_timeout_ms the engine drops it, as for HTTP.
TEST(WsFlow, AClientThatStopsReadingIsDroppedAfterTheStallTimeout) {
  WsApp app;
  ServerConfig cfg = ws_config();
  cfg.body_timeout_ms = 300;
  cfg.ws_ping_interval_ms = 100;  // pings cannot get through either: they must not keep it alive
  EventLoop loop(cfg, app, /*sndbuf=*/kSmallBuf);
  Client c(loop.port(), /*rcvbuf=*/kSmallBuf);
  ASSERT_TRUE(open_ws(c));
  ASSERT_TRUE(loop.call([&] {
    WsJob& j = *app.jobs[0];
    j.send_total = 64u << 20;
    j.send_chunk = 64 * 1024;
    app.produce(j);
  }));
  ASSERT_TRUE(wait_for(loop, [&] { return app.pauses.load() >= 1; }));
  const int64_t t0 = mono_ms();
  ASSERT_TRUE(wait_for(loop, [&] { return app.aborts.load() == 1; }, 5000))
      << "a client that reads nothing kept its connection";
  const int64_t took = mono_ms() - t0;
  EXPECT_GE(took, 250) << "dropped before the stall timeout";
  EXPECT_LE(took, 3000);
  EXPECT_EQ(app.resumes.load(), 0);
  EXPECT_TRUE(c.wait_closed(5000));
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsFlow, ASlowButSteadyReaderIsNotDropped) {
  WsApp app;
  ServerConfig cfg = ws_config();
  cfg.body_timeout_ms = 300;  // a stall limit, not a limit on how long a send may take
  EventLoop loop(cfg, app, /*sndbuf=*/kSmallBuf);
  Client c(loop.port(), /*rcvbuf=*/kSmallBuf);
  ASSERT_TRUE(open_ws(c));
  constexpr uint64_t kTotal = 256u << 10;
  ASSERT_TRUE(loop.call([&] {
    WsJob& j = *app.jobs[0];
    j.send_total = kTotal;
    j.send_chunk = 32 * 1024;
    app.produce(j);
  }));
  // About 4 KiB every 20 ms: the whole takes over a second, four stall timeouts, but every
  // read lets the server write more.
  c.read_size = 4096;
  c.read_gap_ms = 20;
  const int64_t t0 = mono_ms();
  uint64_t got = 0;
  while (got < kTotal) {
    Frame f = read_frame(c, 5000);
    ASSERT_TRUE(f.is(Opcode::kBinary)) << "at " << got << ": " << f;
    ASSERT_TRUE(matches_pattern(f.payload, got)) << "message at " << got;
    got += f.payload.size();
  }
  EXPECT_GT(mono_ms() - t0, 600) << "the reads were not slow enough to test anything";
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- closing ---------------------------------------------------------------------------------

TEST(WsClose, ClientCloseIsReportedOnceEchoedAndTheServerClosesFirst) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  // A message right before the close: delivered before on_ws_closed.
  ASSERT_TRUE(c.send(text("last") + close_frame(4000, "done here")));
  Frame f = read_frame(c);
  EXPECT_EQ(f.payload, "last") << f;
  EXPECT_TRUE(closed_with(c, 4000));
  EXPECT_TRUE(eof_next(c));
  ASSERT_TRUE(wait_for(loop, [&] { return app.finished.load() == 1; }));
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.closed_calls, 1);
  EXPECT_EQ(j.close_code, 4000);
  EXPECT_EQ(j.close_reason, "done here");
  EXPECT_EQ(j.events, (std::vector<std::string>{"accept", "msg", "closed:4000"}));
  c.close_now();
  ASSERT_TRUE(loop.wait([](const ServerStats& s) { return s.connections_open == 0; }));
  EXPECT_EQ(job_copy(loop, app).closed_calls, 1);
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsClose, ClientCloseWithoutACodeIsAnsweredWithoutOneAndReportedAs1005) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  ASSERT_TRUE(c.send(frame(Opcode::kClose, "")));
  Frame f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kClose)) << f;
  EXPECT_EQ(f.payload.size(), 0u) << "a close without a code is answered without one";
  EXPECT_TRUE(eof_next(c));
  ASSERT_TRUE(wait_for(loop, [&] { return app.closed.load() == 1; }));
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.close_code, ws::close_code::kNoStatus);
  EXPECT_EQ(j.close_reason, "");
}

TEST(WsClose, AppCloseSendsItsCodeStopsMessagesAndEndsAfterTheClientAnswers) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  WriteStatus after = WriteStatus::kOk;
  ASSERT_TRUE(loop.call([&] {
    Exchange& ex = *app.jobs[0]->ex;
    ex.ws_close(4001, "bye");
    after = ex.ws_send(false, "late", 4);
  }));
  EXPECT_EQ(after, WriteStatus::kError) << "ws_send after ws_close";
  Frame f = read_frame(c);
  ASSERT_TRUE(f.is(Opcode::kClose)) << f;
  EXPECT_EQ(f.close_code(), 4001);
  EXPECT_EQ(f.close_reason(), "bye");
  // The server waits for the client's answer; a message in between is not delivered.
  EXPECT_TRUE(c.quiet_for(50)) << "closed before the client answered";
  ASSERT_TRUE(c.send(text("in flight") + close_frame(4001)));
  EXPECT_TRUE(eof_next(c));
  ASSERT_TRUE(loop.call([&] { app.finish(*app.jobs[0]); }));
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.closed_calls, 0) << "the app closed: no on_ws_closed";
  EXPECT_EQ(j.message_count, 0u);
  EXPECT_TRUE(no_app_errors(loop, app));
}

struct ProtocolErrorCase {
  const char* name;
  std::string wire;  // after the handshake
  uint16_t code;
};
void PrintTo(const ProtocolErrorCase& c, std::ostream* os) { *os << c.name; }

class WsProtocolError : public ::testing::TestWithParam<ProtocolErrorCase> {};

constexpr uint64_t kMaxSize = 1000;

TEST_P(WsProtocolError, FailsTheConnectionWithTheCodeForBothSides) {
  WsApp app;
  ServerConfig cfg = ws_config();
  cfg.ws_max_size = kMaxSize;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  // A valid message first: delivered and echoed before the failure.
  ASSERT_TRUE(c.send(text("fine") + GetParam().wire));
  EXPECT_EQ(read_frame(c).payload, "fine");
  EXPECT_TRUE(closed_with(c, GetParam().code));
  EXPECT_TRUE(eof_next(c)) << "the server must close at once after a protocol error";
  ASSERT_TRUE(wait_for(loop, [&] { return app.closed.load() == 1; }));
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.close_code, GetParam().code);
  EXPECT_EQ(j.closed_calls, 1);
  EXPECT_EQ(j.message_count, 1u);
  EXPECT_TRUE(no_app_errors(loop, app));
}

INSTANTIATE_TEST_SUITE_P(
    Ws, WsProtocolError,
    ::testing::Values(
        ProtocolErrorCase{"Unmasked", frame(Opcode::kText, "x", true, false), 1002},
        ProtocolErrorCase{"InvalidUtf8", text("ok \xc3\x28"), 1007},
        ProtocolErrorCase{"InvalidUtf8InFragments", frame(Opcode::kText, "\xe2\x82", false) +
                                                        frame(Opcode::kContinuation, "x", true), 1007},
        ProtocolErrorCase{"OverMaxSize", binary(pattern_string(kMaxSize + 1)), 1009},
        ProtocolErrorCase{"OverMaxSizeInFragments", frame(Opcode::kBinary, pattern_string(600), false) +
                                                        frame(Opcode::kContinuation, pattern_string(401)), 1009},
        ProtocolErrorCase{"UnknownOpcode", frame(Opcode(3), "x"), 1002},
        ProtocolErrorCase{"UnexpectedContinuation", frame(Opcode::kContinuation, "x"), 1002},
        ProtocolErrorCase{"BadCloseCode", close_frame(1005), 1002}),
    [](const ::testing::TestParamInfo<ProtocolErrorCase>& i) { return std::string(i.param.name); });

TEST(WsLimits, AMessageOfExactlyMaxSizeIsDelivered) {
  WsApp app;
  ServerConfig cfg = ws_config();
  cfg.ws_max_size = kMaxSize;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  std::string m = pattern_string(kMaxSize);
  ASSERT_TRUE(c.send(binary(m) + frame(Opcode::kText, std::string_view(m).substr(0, 500), false) +
                     frame(Opcode::kContinuation, std::string_view(m).substr(500))));
  EXPECT_TRUE(read_frame(c).payload == m);
  EXPECT_TRUE(read_frame(c).payload == m);
  EXPECT_EQ(app.closed.load(), 0);
}

TEST(WsClose, EofWithoutACloseFrameIsReportedAs1006) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  ASSERT_TRUE(c.send(text("before")));
  EXPECT_EQ(read_frame(c).payload, "before");
  c.close_now();
  ASSERT_TRUE(wait_for(loop, [&] { return app.closed.load() == 1; }));
  ASSERT_TRUE(loop.wait([](const ServerStats& s) { return s.connections_open == 0; }));
  WsJob j = job_copy(loop, app);
  EXPECT_EQ(j.close_code, ws::close_code::kAbnormal);
  EXPECT_EQ(j.closed_calls, 1);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsClose, FinishWithoutCloseSends1000AndEndsAfterTheClientAnswers) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  ASSERT_TRUE(c.send(text("x")));
  EXPECT_EQ(read_frame(c).payload, "x");
  ASSERT_TRUE(loop.call([&] { app.finish(*app.jobs[0]); }));
  EXPECT_TRUE(closed_with(c, 1000));
  EXPECT_TRUE(c.quiet_for(50)) << "closed before the client answered";
  ASSERT_TRUE(c.send(close_frame(1000)));
  EXPECT_TRUE(eof_next(c));
  EXPECT_EQ(job_copy(loop, app).closed_calls, 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(WsClose, AbortDropsTheConnectionWithoutACloseFrame) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  ASSERT_TRUE(loop.call([&] { app.abort(*app.jobs[0]); }));
  EXPECT_TRUE(eof_next(c));
  c.close_now();  // ends the server's lingering at once
  ASSERT_TRUE(loop.wait([](const ServerStats& s) { return s.connections_open == 0; }, 3000));
  EXPECT_EQ(app.aborts.load(), 0) << "the app aborted itself: no on_abort";
  EXPECT_TRUE(no_app_errors(loop, app));
}

// RFC 6455 7.1.1: after its close frame the server waits for the client's, but not forever
// (kWsCloseMs = 5 s in server.cpp, not configurable: this test takes that long).
TEST(WsClose, AClientThatNeverAnswersTheCloseIsDisconnectedAfterTheCloseTimeout) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  int64_t t0 = mono_ms();
  ASSERT_TRUE(loop.call([&] { app.jobs[0]->ex->ws_close(4001, "bye"); }));
  EXPECT_TRUE(closed_with(c, 4001));
  EXPECT_TRUE(c.quiet_for(1000)) << "closed long before the close timeout";
  EXPECT_TRUE(eof_next(c, 8000));
  int64_t took = mono_ms() - t0;
  EXPECT_GE(took, 4500);
  EXPECT_LE(took, 7000);
  // The app had not finished: it hears the connection is gone.
  ASSERT_TRUE(wait_for(loop, [&] { return app.aborts.load() == 1; }));
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- keep-alive pings ----------------------------------------------------------------------

TEST(WsPing, AClientThatAnswersStaysOpenOneThatDoesNotIsClosedWith1011) {
  WsApp app;
  ServerConfig cfg = ws_config();
  cfg.ws_ping_interval_ms = 100;
  cfg.ws_ping_timeout_ms = 100;
  EventLoop loop(cfg, app);
  Client good(loop.port()), silent(loop.port());
  ASSERT_TRUE(open_ws(good));
  ASSERT_TRUE(open_ws(silent));
  // The good client answers every ping; it reads only pings (it sends nothing else).
  std::vector<std::string> payloads;
  int64_t t0 = mono_ms();
  while (payloads.size() < 4) {
    Frame f = read_frame(good, 2000);
    ASSERT_TRUE(f.is(Opcode::kPing)) << f;
    payloads.push_back(f.payload);
    ASSERT_TRUE(good.send(frame(Opcode::kPong, f.payload)));
  }
  int64_t took = mono_ms() - t0;
  EXPECT_GE(took, 250) << "four pings at a 100 ms interval";
  for (size_t i = 1; i < payloads.size(); ++i) EXPECT_NE(payloads[i], payloads[i - 1]);
  // The silent one got a ping, no pong went back: 1011 and the connection ends.
  Frame p = read_frame(silent, 2000);
  EXPECT_TRUE(p.is(Opcode::kPing)) << p;
  EXPECT_TRUE(closed_with(silent, 1011));
  EXPECT_TRUE(eof_next(silent));
  ASSERT_TRUE(wait_for(loop, [&] { return app.closed.load() == 1; }));
  // The good one is still open and serves messages.
  ASSERT_TRUE(good.send(text("still here")));
  Frame f;
  do f = read_frame(good); while (f.is(Opcode::kPing) && good.send(frame(Opcode::kPong, f.payload)));
  EXPECT_EQ(f.payload, "still here") << f;
  EXPECT_EQ(job_copy(loop, app, 0).closed_calls, 0);
  WsJob s = job_copy(loop, app, 1);
  EXPECT_EQ(s.closed_calls, 1);
  EXPECT_EQ(s.close_code, ws::close_code::kInternalError);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- shutdown --------------------------------------------------------------------------------

TEST(WsShutdown, GracefulStopSends1012AndRunEndsOnceTheClientAnswers) {
  WsApp app;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  loop.server().stop(true);
  EXPECT_TRUE(closed_with(c, 1012));
  ASSERT_TRUE(wait_for(loop, [&] { return app.closed.load() == 1; }));
  EXPECT_EQ(job_copy(loop, app).close_code, ws::close_code::kServiceRestart);
  EXPECT_FALSE(loop.exited()) << "the server must wait for the client's close frame";
  ASSERT_TRUE(c.send(close_frame(1012)));
  EXPECT_TRUE(eof_next(c));
  c.close_now();
  EXPECT_TRUE(loop.wait_exit(3000)) << "run() did not finish after the closing handshake";
  EXPECT_EQ(loop.rc(), 0);
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- steady state and memory --------------------------------------------------------------

// Private members of http1::Connection, for measuring (not driving) it: explicit instantiation
// may name private members, and the friend function hands the member pointer out. This lets the
// test size WsState and see what an idle connection still holds without widening the engine's API.
struct WsMember {};
struct HeadersMember {};
struct InMember {};
struct OutMember {};
template <class Tag, auto M>
struct Rob {
  friend auto member(Tag) { return M; }
};
auto member(WsMember);
auto member(HeadersMember);
auto member(InMember);
auto member(OutMember);
template struct Rob<WsMember, &http1::Connection::ws_>;
template struct Rob<HeadersMember, &http1::Connection::headers_>;
template struct Rob<InMember, &http1::Connection::in_>;
template struct Rob<OutMember, &http1::Connection::out_>;
using WsState = std::remove_reference_t<decltype(*(std::declval<http1::Connection&>().*member(WsMember{})))>;

// What an idle upgraded connection holds in the engine (loop thread).
struct Footprint {
  size_t connection = 0, ws_state = 0, headers_heap = 0, message_heap = 0;
  bool has_ws = false, holds_in = false, holds_out = false;
  size_t in_free = 0, in_allocated = 0, out_free = 0, out_allocated = 0;
  size_t total() const { return connection + ws_state + headers_heap + message_heap; }
};
std::ostream& operator<<(std::ostream& o, const Footprint& f) {
  return o << "Connection " << f.connection << " + WsState " << f.ws_state << " + header slots "
           << f.headers_heap << " + message buffer " << f.message_heap << " = " << f.total()
           << " bytes; holds in=" << f.holds_in << " out=" << f.holds_out << "; in pool "
           << f.in_free << "/" << f.in_allocated << " free, out pool " << f.out_free << "/"
           << f.out_allocated << " free";
}
Footprint footprint(EventLoop& loop, Exchange& ex) {
  return on_loop(loop, [&] {
    auto& conn = static_cast<http1::Connection&>(ex);
    Footprint f;
    f.connection = sizeof(http1::Connection);
    f.ws_state = sizeof(WsState);
    const auto& ws = conn.*member(WsMember{});
    const auto& headers = conn.*member(HeadersMember{});
    f.has_ws = ws != nullptr;
    f.headers_heap = headers.capacity() * sizeof(Header);
    // std::string keeps up to 15 bytes inline: only a larger capacity is on the heap.
    if (ws && ws->msg.capacity() > 15) f.message_heap = ws->msg.capacity() + 1;
    f.holds_in = (conn.*member(InMember{})) != nullptr;
    f.holds_out = (conn.*member(OutMember{})) != nullptr;
    f.in_free = loop.server().in_pool().free_count();
    f.in_allocated = loop.server().in_pool().allocated();
    f.out_free = loop.server().out_pool().free_count();
    f.out_allocated = loop.server().out_pool().allocated();
    return f;
  });
}

constexpr size_t kIdleBudget = 8 * 1024;  // the bound for an idle WebSocket in the engine

// What an idle upgraded connection costs after `traffic` (run by the test thread; the client has
// read every answer when it returns).
template <class Traffic>
Footprint idle_footprint(const char* label, bool echo_from_task, Traffic traffic) {
  WsApp app;
  app.echo_from_task = echo_from_task;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  EXPECT_TRUE(open_ws(c));
  EXPECT_TRUE(wait_for(loop, [&] { return app.accepted.load() == 1; }));
  Exchange* ex = on_loop(loop, [&] { return app.jobs[0]->ex; });
  traffic(c);
  // One more loop round after the client saw the last answer: the engine is done with that event.
  EXPECT_TRUE(loop.call([] {}));
  Footprint f = footprint(loop, *ex);
  EXPECT_TRUE(f.has_ws);
  std::printf("[ memory   ] idle %s: %s\n", label, ::testing::PrintToString(f).c_str());
  return f;
}

::testing::AssertionResult idle_and_small(const Footprint& f) {
  if (f.holds_in || f.holds_out || f.in_free != f.in_allocated || f.out_free != f.out_allocated)
    return ::testing::AssertionFailure() << "buffers kept while idle: " << f;
  if (f.total() >= kIdleBudget) return ::testing::AssertionFailure() << "over " << kIdleBudget << ": " << f;
  return ::testing::AssertionSuccess();
}

void echo_three(Client& c) {
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(c.send(text("ping " + std::to_string(i))));
    ASSERT_TRUE(read_frame(c).ok);
  }
}

TEST(WsMemory, RightAfterAcceptAnIdleWebSocketHoldsNoBuffersAndCostsUnder8KiB) {
  EXPECT_TRUE(idle_and_small(idle_footprint("after accept", false, [](Client&) {})));
}

TEST(WsMemory, AfterEchoesSentFromATaskAnIdleWebSocketHoldsNoBuffers) {
  EXPECT_TRUE(idle_and_small(idle_footprint("after echoes from a task", true, echo_three)));
}

TEST(WsMemory, AfterEchoesSentFromOnMessageAnIdleWebSocketHoldsNoBuffers) {
  EXPECT_TRUE(idle_and_small(idle_footprint("after echoes from on_ws_message", false, echo_three)));
}

TEST(WsMemory, AfterALargeSendFromATaskAnIdleWebSocketHoldsNoBuffers) {
  EXPECT_TRUE(idle_and_small(idle_footprint("after a 20 KiB echo from a task", true, [](Client& c) {
    std::string m = pattern_string(20 * 1024);
    ASSERT_TRUE(c.send(binary(m)));
    Frame e = read_frame(c);
    ASSERT_TRUE(e.payload == m) << e;
  })));
}

TEST(WsMemory, AGatheredMessageDoesNotLeaveItsStorageOnAnIdleConnection) {
  Footprint f = idle_footprint("after a gathered message", false, [](Client& c) {
    // A fragmented 48 KiB message: the engine gathers it in WsState::msg.
    std::string m = pattern_string(48 * 1024);
    ASSERT_TRUE(c.send(frame(Opcode::kBinary, std::string_view(m).substr(0, 24 * 1024), false) +
                       frame(Opcode::kContinuation, std::string_view(m).substr(24 * 1024))));
    Frame e = read_frame(c);
    ASSERT_TRUE(e.payload == m) << e;
  });
  EXPECT_TRUE(idle_and_small(f));
}

// Echo from inside on_ws_message, as a bridge with a fast path would: nothing is allocated on the
// loop thread per message, by the engine or the app, and no buffer is created.
TEST(WsMemory, EchoingManySmallMessagesAllocatesNothingPerMessage) {
  WsApp app;
  app.record = false;
  EventLoop loop(ws_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(open_ws(c));
  auto round = [&](int i) {
    // Alternate one message per write and bursts of several, text and binary, two length forms.
    int n = i % 4 == 0 ? 8 : 1;
    std::string wire;
    for (int k = 0; k < n; ++k) {
      std::string m = pattern_string(size_t((i * 31 + k) % 200));
      wire += (k % 2) ? binary(m) : text(m);
    }
    if (!c.send(wire)) return false;
    for (int k = 0; k < n; ++k)
      if (!read_frame(c).ok) return false;
    return true;
  };
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(round(i));  // warm-up: pools and vectors at size
  struct Snap {
    uint64_t allocs;
    uint64_t buffers;
    int messages;
  };
  auto snap = [&] {
    return on_loop(loop, [&] {
      return Snap{g_counted_allocs.load(), loop.server().stats().buffers_allocated, app.messages.load()};
    });
  };
  Snap before = snap();
  for (int i = 0; i < 2000; ++i) ASSERT_TRUE(round(i));
  Snap after = snap();
  EXPECT_GT(after.messages - before.messages, 2000);
  EXPECT_EQ(after.allocs, before.allocs) << "operator new on the loop thread while echoing";
  EXPECT_EQ(after.buffers, before.buffers);
  EXPECT_TRUE(no_app_errors(loop, app));
}

}  // namespace
}  // namespace fulmen
