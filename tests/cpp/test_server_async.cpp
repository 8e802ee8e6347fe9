// The engine's API for asynchronous apps (ASGI, later) end to end, without Python: a test "event
// loop" thread plays asyncio (EventLoop, async_support.hpp, shared with test_server_ws.cpp). It
// owns the Server and runs app tasks between steps; the test thread only talks to it through
// post()/call() (asyncio's call_soon_threadsafe), reads published snapshots, and drives raw-socket
// clients (server_support.hpp, shared with test_server.cpp).
//
// The app detach()es every exchange in on_request and finishes it later from a task, like an ASGI
// app awaiting its send()/receive(). Every wait is a poll or condition variable with a deadline,
// never a fixed sleep (the app's own "thinking" uses the loop's call_later, as asyncio.sleep would).
//
// Allocation check: as in test_server.cpp, operator new is replaced in this binary
// (alloc_counter.cpp) and counts calls made on the loop thread, so "nothing allocated per request"
// covers the engine's async paths (the app and the test loop are written to allocate nothing in
// steady state either).

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"
#include "core/base/log.hpp"
#include "core/http1/connection.hpp"
#include "core/server.hpp"
#include "async_support.hpp"
#include "server_support.hpp"

namespace fulmen {
namespace {

using namespace fulmen::test;
using http1::Exchange;
using http1::Header;
using BodyStatus = Exchange::BodyStatus;
using BodyError = Exchange::BodyError;
using WriteStatus = Exchange::WriteStatus;

// ---- the app ---------------------------------------------------------------------------------------

// The app's per-exchange state (ex.app_state), like an ASGI bridge's per-request object.
struct Job {
  Exchange* ex = nullptr;  // valid until the app finished it or the engine called on_abort
  int seq = 0;             // request number, from 1
  int kind = 0;
  std::string target;      // copy of the request target (the views die with the exchange)
  // What the engine told us.
  int aborts = 0, disconnects = 0, body_readies = 0, resumes = 0;
  bool peer_gone_at_disconnect = false;
  // What the app did.
  bool finished = false;     // called finish() or abort()
  bool finish_ok = false;    // finish()'s result
  Exchange::StartError start_result = Exchange::StartError::kNone;
  WriteStatus last_write = WriteStatus::kOk;
  // Request body (receive()).
  bool asked = false;        // want_body(true) outstanding
  bool keep_body = false;
  std::string body;
  uint64_t body_len = 0, body_hash = kFnvInit;
  bool body_eof = false, body_failed = false;
  BodyError body_error = BodyError::kNone;
  uint64_t hold_at = UINT64_MAX;  // stop asking once this many bytes arrived (flow control)
  bool holding = false;
  BodyStatus first_peek = BodyStatus::kData;
  // Streamed response (send()).
  uint64_t total = 0, sent = 0;
  size_t chunk = 0;
  int pauses = 0;
  bool waiting_resume = false;
  int hops = 0;
  bool cl = false;  // streamed with a Content-Length

  bool alive() const { return aborts == 0 && !finished; }
  void reset() {
    std::string keep_target = std::move(target), keep_body_buf = std::move(body);
    *this = Job();
    target = std::move(keep_target);
    body = std::move(keep_body_buf);
    target.clear();
    body.clear();
  }
};

// Paths: /hello, /think (the test finishes it), /echo and /sum (read the body through want_body),
// /stream?n=&c=&cl= (streamed from tasks, pausing on kPause), /later?ms= (replies after ms, from a
// call_later task), /hops?n= (replies after n task hops), /peek (body_peek from a task first).
class AsyncApp : public http1::AppHandler {
 public:
  enum Kind { kHello, kThink, kEcho, kSum, kStream, kLater, kHops, kPeek, kNotFound };

  EventLoop* loop = nullptr;
  bool recycle = false;     // steady state: reuse Job objects once finished
  bool log_events = false;  // record "req:<target>" / "fin:<target>" in events
  // Test hooks, all on the loop thread.
  std::function<void(Job&)> on_disconnect_fn;

  std::atomic<int> requests{0}, aborts{0}, disconnects{0}, body_readies{0}, resumes{0},
      pauses{0}, finished{0}, errors{0};
  std::atomic<uint64_t> body_bytes{0};
  std::atomic<int> holding{0};
  std::vector<std::string> events;       // loop thread
  std::vector<std::string> error_notes;  // loop thread
  std::vector<std::unique_ptr<Job>> jobs;  // every Job ever made (loop thread)
  std::vector<Job*> free_jobs;

  AsyncApp() {
    jobs.reserve(64);
    free_jobs.reserve(64);
  }

  // ---- AppHandler ----
  void on_request(Exchange& ex) noexcept override {
    check_not_in_call("on_request");
    Job* j = acquire();
    j->ex = &ex;
    j->seq = requests.load() + 1;
    ex.app_state = j;
    ex.detach();
    const http1::Request& r = ex.request();
    j->target.assign(r.target.data(), r.target.size());
    if (log_events) events.push_back("req:" + j->target);
    route(*j, r.path, r.query);
    requests.fetch_add(1);
  }

  void on_resume(Exchange& ex) noexcept override {
    check_not_in_call("on_resume");
    Job* j = job(ex, "on_resume");
    if (!j) return;
    ++j->resumes;
    if (!j->waiting_resume) note_error("on_resume while not paused");
    j->waiting_resume = false;
    soon_produce(*j);
    resumes.fetch_add(1);
  }

  void on_abort(Exchange& ex) noexcept override {
    check_not_in_call("on_abort");
    Job* j = job(ex, "on_abort");
    ex.app_state = nullptr;
    if (!j) return;
    ++j->aborts;
    if (j->finished) note_error("on_abort after the app finished");
    j->ex = nullptr;  // dead now: the app must not touch it again
    aborts.fetch_add(1);
  }

  void on_body_ready(Exchange& ex) noexcept override {
    check_not_in_call("on_body_ready");
    Job* j = job(ex, "on_body_ready");
    if (!j) return;
    ++j->body_readies;
    if (!j->asked) note_error("on_body_ready without want_body");
    j->asked = false;
    // One message per call, as an ASGI receive() returns one: take what is there, no more.
    std::string_view d;
    BodyStatus s = ex.body_peek(&d, false);
    switch (s) {
      case BodyStatus::kData:
        j->body_len += d.size();
        j->body_hash = fnv1a(j->body_hash, d);
        if (j->keep_body) j->body.append(d);
        ex.body_consume(d.size());
        body_bytes.fetch_add(d.size());
        break;
      case BodyStatus::kEof:
        j->body_eof = true;
        break;
      case BodyStatus::kError:
        j->body_failed = true;
        j->body_error = ex.body_error();
        break;
      case BodyStatus::kWouldBlock:
        note_error("on_body_ready with nothing to read");
        break;
    }
    if (j->body_eof || j->body_failed) {
      soon_body_done(*j);
    } else if (j->body_len >= j->hold_at) {
      j->holding = true;
      holding.fetch_add(1);
    } else {
      soon_ask(*j);  // the app's next receive()
    }
    body_readies.fetch_add(1);
  }

  void on_disconnect(Exchange& ex) noexcept override {
    check_not_in_call("on_disconnect");
    Job* j = job(ex, "on_disconnect");
    if (!j) return;
    ++j->disconnects;
    if (j->disconnects > 1) note_error("on_disconnect twice");
    j->peer_gone_at_disconnect = ex.peer_gone();
    if (on_disconnect_fn) on_disconnect_fn(*j);
    disconnects.fetch_add(1);
  }

  // ---- the app's actions (tasks, loop thread) ----
  void ask(Job& j) {
    if (!j.alive()) return;
    InCall c(*this);
    j.asked = true;
    j.ex->want_body(true);
  }

  void reply(Job& j, int status, std::string_view body, bool chunked_out = false) {
    if (!j.alive()) return;
    InCall c(*this);
    char len[24];
    int n = std::snprintf(len, sizeof len, "%zu", body.size());
    Header h[] = {{"Content-Type", "text/plain"}, {"Content-Length", std::string_view(len, size_t(n))}};
    j.start_result = j.ex->start_response(status, "", h, chunked_out ? 1 : 2);
    if (chunked_out) {
      size_t half = body.size() / 2;
      j.last_write = j.ex->write(body.data(), half);
      if (j.last_write != WriteStatus::kError)
        j.last_write = j.ex->write(body.data() + half, body.size() - half);
    } else {
      j.last_write = j.ex->write(body.data(), body.size());
    }
    finish(j);
  }

  void finish(Job& j) {
    if (!j.alive()) return;
    {
      InCall c(*this);
      j.finish_ok = j.ex->finish();
    }
    done(j);
  }

  void abort(Job& j) {
    if (!j.alive()) return;
    {
      InCall c(*this);
      j.ex->abort();
    }
    done(j);
  }

  void produce(Job& j) {
    if (!j.alive()) return;
    char buf[32768];
    {
      InCall c(*this);
      while (j.sent < j.total) {
        size_t n = size_t(std::min<uint64_t>(j.chunk, j.total - j.sent));
        for (size_t i = 0; i < n; ++i) buf[i] = pattern(j.sent + i);
        WriteStatus r = j.ex->write(buf, n);
        j.last_write = r;
        if (r == WriteStatus::kError) {
          j.ex->abort();
          break;
        }
        j.sent += n;  // accepted, even on kPause
        if (r == WriteStatus::kPause) {
          ++j.pauses;
          j.waiting_resume = true;
          pauses.fetch_add(1);
          return;  // the next send() waits for on_resume
        }
      }
    }
    if (j.last_write == WriteStatus::kError) {
      done(j);
      return;
    }
    finish(j);
  }

  // Tasks (captures of two pointers: std::function stores them without allocating).
  void soon_ask(Job& j);
  void soon_produce(Job& j);
  void soon_body_done(Job& j);

  std::vector<std::string> take_errors() { return error_notes; }

 private:
  struct InCall {
    AsyncApp& a;
    explicit InCall(AsyncApp& app) : a(app) { ++a.in_call_; }
    ~InCall() { --a.in_call_; }
  };
  // The engine must never call back into the app from inside one of the app's own calls
  // (a send() re-entering request dispatch, say): that is what deferral is for.
  void check_not_in_call(const char* what) {
    if (in_call_ > 0) note_error(std::string(what) + " called from inside an exchange call");
  }
  void note_error(std::string what) {
    error_notes.push_back(std::move(what));
    errors.fetch_add(1);
  }
  Job* job(Exchange& ex, const char* what) {
    auto* j = static_cast<Job*>(ex.app_state);
    if (!j) note_error(std::string(what) + " for an exchange without app state");
    return j;
  }
  Job* acquire() {
    if (recycle && !free_jobs.empty()) {
      Job* j = free_jobs.back();
      free_jobs.pop_back();
      j->reset();
      return j;
    }
    jobs.push_back(std::make_unique<Job>());
    return jobs.back().get();
  }
  void done(Job& j) {
    j.finished = true;
    if (j.ex) j.ex->app_state = nullptr;
    j.ex = nullptr;
    if (log_events) events.push_back("fin:" + j.target);
    finished.fetch_add(1);
    if (recycle) free_jobs.push_back(&j);
  }
  void route(Job& j, std::string_view path, std::string_view query);

  int in_call_ = 0;
};

void AsyncApp::soon_ask(Job& j) {
  loop->soon([this, jp = &j] { ask(*jp); });
}
void AsyncApp::soon_produce(Job& j) {
  loop->soon([this, jp = &j] { produce(*jp); });
}
void AsyncApp::soon_body_done(Job& j) {
  loop->soon([this, jp = &j] {
    Job& jj = *jp;
    if (!jj.alive() || jj.body_failed) return;  // a failed body: the test decides
    if (jj.kind == kEcho || jj.kind == kPeek) return reply(jj, 200, jj.body);
    reply(jj, 200, sum_chars(jj.body_len, jj.body_hash).view());
  });
}

void AsyncApp::route(Job& j, std::string_view path, std::string_view query) {
  if (path == "/hello") {
    j.kind = kHello;
    loop->soon([this, jp = &j] { reply(*jp, 200, "hello"); });
  } else if (path == "/think") {
    j.kind = kThink;  // the test finishes it
  } else if (path == "/echo" || path == "/sum") {
    j.kind = path == "/echo" ? kEcho : kSum;
    j.keep_body = j.kind == kEcho;
    j.hold_at = uint64_t(query_int(query, "hold", -1));  // -1: UINT64_MAX
    soon_ask(j);
  } else if (path == "/peek") {
    // receive() that first looks without blocking, then asks the engine to wait for it.
    j.kind = kPeek;
    j.keep_body = true;
    loop->soon([this, jp = &j] {
      Job& jj = *jp;
      if (!jj.alive()) return;
      std::string_view d;
      {
        InCall c(*this);
        jj.first_peek = jj.ex->body_peek(&d, false);
      }
      ask(jj);
    });
  } else if (path == "/stream") {
    j.kind = kStream;
    j.total = uint64_t(query_int(query, "n", 1 << 20));
    j.chunk = size_t(std::clamp<int64_t>(query_int(query, "c", 8192), 1, 32768));
    j.cl = query_int(query, "cl", 0) != 0;
    loop->soon([this, jp = &j] {
      Job& jj = *jp;
      if (!jj.alive()) return;
      char len[24];
      int n = std::snprintf(len, sizeof len, "%llu", (unsigned long long)jj.total);
      Header h[] = {{"Content-Length", std::string_view(len, size_t(n))}};
      {
        InCall c(*this);
        jj.start_result = jj.ex->start_response(200, "", h, jj.cl ? 1 : 0);
      }
      produce(jj);
    });
  } else if (path == "/later") {
    j.kind = kLater;
    loop->later(int(query_int(query, "ms", 10)), [this, jp = &j] { reply(*jp, 200, jp->target); });
  } else if (path == "/hops") {
    j.kind = kHops;
    j.hops = int(query_int(query, "n", 1));
    struct Hop {
      static void run(AsyncApp* a, Job* jp) {
        if (--jp->hops > 0) {
          a->loop->soon([a, jp] { run(a, jp); });
          return;
        }
        a->reply(*jp, 200, jp->target);
      }
    };
    loop->soon([this, jp = &j] { Hop::run(this, jp); });
  } else {
    j.kind = kNotFound;
    loop->soon([this, jp = &j] { reply(*jp, 404, "not found\n"); });
  }
}

ServerConfig async_config() {
  ServerConfig c = test_config();
  c.exit_watchdog = false;  // a hung test is ctest's to time out, not a reason to _exit()
  return c;
}

// Small socket buffers so responses and uploads of a few hundred KiB cannot fit in flight.
constexpr int kSmallBuf = 4096;


// Waits until the app has been handed n requests in all.
bool wait_requests(EventLoop& loop, AsyncApp& app, int n) {
  return loop.wait([&](const ServerStats&) { return app.requests.load() == n; });
}

// The app saw the engine keep its contract (AsyncApp notes every breach; listed on failure).
::testing::AssertionResult no_app_errors(EventLoop& loop, AsyncApp& app) {
  if (app.errors.load() == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "app errors: " << ::testing::PrintToString(on_loop(loop, [&] { return app.take_errors(); }));
}

// ---- responses from later tasks ------------------------------------------------------------------

// A response finished from a task leaves at once, inside the app's own calls: the task blocks the
// loop thread until the client has every byte, so no later step can have sent them.
TEST(Async, ResponseFinishedFromLaterTaskLeavesImmediately) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));

  struct Seen {
    std::string bytes;
    uint64_t steps_before = 0, steps_after = 0;
  } seen;
  const int cfd = c.fd();
  ASSERT_TRUE(loop.call([&] {
    seen.steps_before = loop.steps();
    app.reply(*app.jobs[0], 200, "from a later task", /*chunked_out=*/true);
    // Still inside this task: wait (blocking the loop) for the whole response at the client.
    int64_t deadline = mono_ms() + 3000;
    char buf[4096];
    while (mono_ms() < deadline) {
      ssize_t n = recv(cfd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) seen.bytes.assign(buf, size_t(n));
      if (seen.bytes.size() >= 5 && seen.bytes.compare(seen.bytes.size() - 5, 5, "0\r\n\r\n") == 0)
        break;
      pollfd p{cfd, POLLIN, 0};
      poll(&p, 1, 20);  // new bytes, or look again (PEEK leaves POLLIN set)
    }
    seen.steps_after = loop.steps();
  }));
  EXPECT_EQ(seen.steps_after, seen.steps_before);
  EXPECT_EQ(seen.bytes.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << seen.bytes;
  EXPECT_GE(seen.bytes.size(), 5u);
  EXPECT_NE(seen.bytes.find("from a "), std::string::npos) << seen.bytes;
  EXPECT_TRUE(seen.bytes.size() >= 5 &&
              seen.bytes.compare(seen.bytes.size() - 5, 5, "0\r\n\r\n") == 0)
      << "the final chunk did not leave with finish(): " << seen.bytes;

  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "from a later task");
  EXPECT_EQ(r.header("Transfer-Encoding"), "chunked");
  // The connection is reused afterwards.
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(is_hello(c.read_response()));
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(Async, ResponsesAfterSeveralTaskHopsAndTimers) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  for (int i = 0; i < 10; ++i) {
    std::string t = i % 2 ? "/hops?n=" + std::to_string(i) : "/later?ms=" + std::to_string(i * 3);
    ASSERT_TRUE(c.send(get(t)));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << i << ": " << r;
    EXPECT_EQ(r.status, 200);
  }
  Response nf;
  ASSERT_TRUE(c.send(get("/nowhere")));
  nf = c.read_response();
  ASSERT_TRUE(nf.ok) << nf;
  EXPECT_EQ(nf.status, 404);
  // The bytes leave inside finish(), so the app may not have counted it yet.
  EXPECT_TRUE(loop.wait([&](const ServerStats&) { return app.finished.load() == 11; }));
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// An async app's error path: send_simple() (or finish() before start_response(), which answers
// 500 through it) from a task must leave at once, like every other call from a task. (Before
// d9e7c7e, send_simple() did not kick(): the response stayed queued and the client waited forever.)
TEST(Async, SimpleResponseFromATaskIsSent) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  ASSERT_TRUE(loop.call([&] {
    Job& j = *app.jobs[0];
    j.ex->send_simple(503, "busy\n", false);
    j.finished = true;
  }));
  Response r = c.read_response(2000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "busy\n");
  // Keep-alive was asked for: the connection serves the next request.
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(is_hello(c.read_response(2000)));
}

TEST(Async, FinishWithoutStartFromATaskAnswers500AndCloses) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  ASSERT_TRUE(loop.call([&] { app.finish(*app.jobs[0]); }));
  Response r = c.read_response(2000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 500);
  EXPECT_TRUE(c.wait_closed(2000));
  c.close_now();  // the server lingers after its half-close until we close
  EXPECT_TRUE(loop.wait([&](const ServerStats& s) { return s.connections_open == 0; }, 2000));
}

// ---- streaming from tasks with flow control ------------------------------------------------------

class AsyncStream : public ::testing::TestWithParam<StreamCase> {};

TEST_P(AsyncStream, WritesPauseResumeAfterDrainAndDeliverEveryByteInOrder) {
  const StreamCase& sc = GetParam();
  ServerConfig cfg = async_config();
  cfg.output_high_watermark = 8192;
  AsyncApp app;
  EventLoop loop(cfg, app, kSmallBuf);
  Client c(loop.port(), kSmallBuf);
  c.read_size = 4096;  // a slow reader
  ASSERT_TRUE(c.send(get(stream_target(sc)) + get("/hello")));
  // Read nothing until the producer was told to pause.
  ASSERT_TRUE(loop.wait([&](const ServerStats&) { return app.pauses.load() >= 1; }));
  Response r = c.read_response(20000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Transfer-Encoding"), sc.content_length ? "" : "chunked");
  EXPECT_EQ(r.body.size(), sc.total);
  EXPECT_TRUE(matches_pattern(r.body, 0));
  ASSERT_TRUE(is_hello(c.read_response()));
  struct Out {
    int pauses, resumes, aborts;
    uint64_t sent;
    bool finished, finish_ok;
  };
  Out o = on_loop(loop, [&] {
    Job& j = *app.jobs[0];
    return Out{j.pauses, j.resumes, j.aborts, j.sent, j.finished, j.finish_ok};
  });
  EXPECT_GE(o.pauses, 1);
  // Every kPause but possibly the last (finish() follows it directly) is followed by on_resume.
  EXPECT_GE(o.resumes, o.pauses - 1);
  EXPECT_LE(o.resumes, o.pauses);
  EXPECT_EQ(o.sent, sc.total);
  EXPECT_TRUE(o.finished && o.finish_ok);
  EXPECT_EQ(o.aborts, 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

INSTANTIATE_TEST_SUITE_P(
    Async, AsyncStream,
    ::testing::Values(StreamCase{"copied_chunked", 512 * 1024, 3000, false},
                      StreamCase{"copied_length", 512 * 1024, 8192, true},
                      StreamCase{"direct_chunked", 512 * 1024, 20000, false},  // writev path
                      StreamCase{"direct_length", 512 * 1024, 32768, true}),
    [](const auto& info) { return std::string(info.param.name); });

// ---- request bodies through want_body --------------------------------------------------------------

TEST(Async, WantBodyDeliversSmallBodiesThenEof) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  struct Case {
    std::string req, body;
  };
  std::vector<Case> cases = {
      {post("/echo", "hello world"), "hello world"},
      {"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n",
       "abcdefgh"},
      {post("/echo", ""), ""},
      {get("/echo"), ""},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(c.send(cases[i].req));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << i << ": " << r;
    EXPECT_EQ(r.status, 200) << i;
    EXPECT_EQ(r.body, cases[i].body) << i;
  }
  // A body arriving in pieces, after the app asked.
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"));
  ASSERT_TRUE(wait_requests(loop, app, 5));
  std::string big = pattern_string(100000);
  for (size_t off = 0; off < big.size(); off += 7000) {
    ASSERT_TRUE(c.send(std::string_view(big).substr(off, 7000)));
  }
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body.size(), big.size());
  EXPECT_TRUE(r.body == big);
  struct Out {
    int readies;
    bool eof, failed;
  };
  Out o = on_loop(loop, [&] {
    Job& j = *app.jobs[4];
    return Out{j.body_readies, j.body_eof, j.body_failed};
  });
  EXPECT_TRUE(o.eof);
  EXPECT_FALSE(o.failed);
  EXPECT_GE(o.readies, 2);  // at least one piece of data, then the end
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

struct UploadCase {
  const char* name;
  bool chunked;
};
void PrintTo(const UploadCase& c, std::ostream* os) { *os << c.name; }
class AsyncUpload : public ::testing::TestWithParam<UploadCase> {};

// The engine reads only for an app that asked: once the app stops asking, the input buffer fills,
// then the socket buffers, and the upload stalls; when it asks again, the rest arrives, in order.
TEST_P(AsyncUpload, StallsWhileTheAppDoesNotAskThenCompletesWithEof) {
  const UploadCase& uc = GetParam();
  ServerConfig cfg = async_config();
  cfg.buffer_size = 8192;  // input buffer: 8 KiB + slack
  AsyncApp app;
  EventLoop loop(cfg, app, 0, kSmallBuf);
  Client c(loop.port(), 0, kSmallBuf);
  const size_t total = 4 << 20;
  const uint64_t hold = 256 * 1024;
  std::string body = pattern_string(total);
  std::string head = "POST /sum?hold=" + std::to_string(hold) + " HTTP/1.1\r\nHost: t\r\n" +
                     (uc.chunked ? std::string("Transfer-Encoding: chunked\r\n")
                                 : "Content-Length: " + std::to_string(total) + "\r\n") +
                     "\r\n";
  std::string wire = head + (uc.chunked ? chunked(body, 9000) : body);

  // Send until the client cannot send any more while the app holds.
  size_t off = 0;
  int64_t deadline = mono_ms() + 15000;
  bool stalled = false;
  while (mono_ms() < deadline) {
    if (c.send_until_stall(wire, &off, 300)) break;  // everything went out: no flow control
    if (app.holding.load() > 0) {
      stalled = true;
      break;
    }
  }
  ASSERT_TRUE(stalled) << "sent " << off << " of " << wire.size() << ", app consumed "
                       << app.body_bytes.load();
  uint64_t consumed = app.body_bytes.load();
  EXPECT_GE(consumed, hold);
  EXPECT_LT(off, wire.size());
  // In flight beyond what the app took: the engine's input buffer and the kernel's socket buffers,
  // nowhere near the 4 MiB the client has.
  EXPECT_LT(off, consumed + 512 * 1024) << "sent " << off << ", consumed " << consumed;
  int readies = app.body_readies.load();
  // Still stalled, and the engine does not call the app, which did not ask.
  EXPECT_FALSE(c.send_until_stall(wire, &off, 200));
  EXPECT_EQ(app.body_readies.load(), readies);
  EXPECT_EQ(app.body_bytes.load(), consumed);

  // The app asks again, and keeps asking: the upload completes.
  ASSERT_TRUE(loop.call([&] {
    Job& j = *app.jobs[0];
    j.hold_at = UINT64_MAX;
    j.holding = false;
    app.ask(j);
  }));
  ASSERT_TRUE(c.send_until_stall(wire, &off, 10000)) << "sent " << off << " of " << wire.size();
  Response r = c.read_response(20000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, sum_text(body));
  struct Out {
    bool eof, failed;
    uint64_t len;
  };
  Out o = on_loop(loop, [&] {
    Job& j = *app.jobs[0];
    return Out{j.body_eof, j.body_failed, j.body_len};
  });
  EXPECT_TRUE(o.eof);
  EXPECT_FALSE(o.failed);
  EXPECT_EQ(o.len, total);
  EXPECT_TRUE(no_app_errors(loop, app));
  // The connection is still good.
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(is_hello(c.read_response()));
}

INSTANTIATE_TEST_SUITE_P(Async, AsyncUpload,
                         ::testing::Values(UploadCase{"content_length", false},
                                           UploadCase{"chunked", true}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- 100-continue ---------------------------------------------------------------------------------

// The loop is not blocked while the client has not sent its body: a task still runs.
void expect_loop_responsive(EventLoop& loop) {
  int64_t t0 = mono_ms();
  EXPECT_TRUE(loop.call([] {}, 2000)) << "the loop thread is blocked";
  EXPECT_LT(mono_ms() - t0, 1000);
}

TEST(Async, ContinueSentWithoutBlockingOnFirstWantBody) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"));
  Response interim = c.read_response();
  ASSERT_TRUE(interim.ok) << interim;
  EXPECT_EQ(interim.status, 100);
  expect_loop_responsive(loop);
  EXPECT_EQ(app.body_readies.load(), 0);
  ASSERT_TRUE(c.send("hello world"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello world");
  EXPECT_TRUE(c.pending().empty()) << c.pending();
  // Keep-alive after a 100-continue exchange: a second one gets its own 100.
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"));
  Response interim2 = c.read_response();
  ASSERT_TRUE(interim2.ok) << interim2;
  EXPECT_EQ(interim2.status, 100);
  ASSERT_TRUE(c.send("xyz"));
  Response r2 = c.read_response();
  ASSERT_TRUE(r2.ok) << r2;
  EXPECT_EQ(r2.body, "xyz");
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(Async, ContinueSentWithoutBlockingOnFirstBodyPeekFromTask) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send("POST /peek HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  Response interim = c.read_response();
  ASSERT_TRUE(interim.ok) << interim;
  EXPECT_EQ(interim.status, 100);
  expect_loop_responsive(loop);
  EXPECT_EQ(on_loop(loop, [&] { return int(app.jobs[0]->first_peek); }), int(BodyStatus::kWouldBlock));
  ASSERT_TRUE(c.send("abcde"));
  // /peek is an echo once the body is in.
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "abcde");
  EXPECT_TRUE(c.pending().empty()) << "a second 100 Continue? " << c.pending();
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(Async, NoContinueWhenTheAppAnswersWithoutReading) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send("POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(3000));
}

// ---- the client going away -------------------------------------------------------------------------

TEST(Async, ClientCloseWhileWaitingForBodyIsReportedOnce) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  app.on_disconnect_fn = [&](Job& j) {
    // The ASGI app sees http.disconnect and answers anyway (as many do): writes must fail.
    loop.soon([&app, jp = &j] {
      Job& jj = *jp;
      if (!jj.alive()) return;
      app.reply(jj, 200, "too late");
    });
  };
  Client c(loop.port());
  ASSERT_TRUE(c.send("POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" +
                     std::string(1000, 'x')));
  ASSERT_TRUE(loop.wait([&](const ServerStats&) { return app.body_bytes.load() >= 1000; }));
  c.close_now();
  ASSERT_TRUE(loop.wait([&](const ServerStats& s) {
    return app.disconnects.load() == 1 && app.finished.load() == 1 && s.connections_open == 0;
  })) << "disconnects=" << app.disconnects.load() << " finished=" << app.finished.load()
      << " open=" << loop.snapshot().connections_open;
  struct Out {
    int disconnects, aborts;
    bool peer_gone, failed, finish_ok;
    BodyError err;
    WriteStatus write;
  };
  Out o = on_loop(loop, [&] {
    Job& j = *app.jobs[0];
    return Out{j.disconnects, j.aborts, j.peer_gone_at_disconnect, j.body_failed, j.finish_ok,
               j.body_error, j.last_write};
  });
  EXPECT_EQ(o.disconnects, 1);
  EXPECT_EQ(o.aborts, 0);
  EXPECT_TRUE(o.peer_gone);
  EXPECT_TRUE(o.failed);
  EXPECT_EQ(int(o.err), int(BodyError::kDisconnected));
  // write()/finish() after on_disconnect() fail (exchange.hpp).
  EXPECT_EQ(int(o.write), int(WriteStatus::kError));
  EXPECT_FALSE(o.finish_ok);
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(Async, ClientCloseWhileThinkingThenAbortCloses) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  c.close_now();
  ASSERT_TRUE(loop.wait([&](const ServerStats&) { return app.disconnects.load() == 1; }));
  // The exchange stays valid: still open until the app lets go.
  EXPECT_EQ(loop.snapshot().connections_open, 1u);
  EXPECT_TRUE(on_loop(loop, [&] { return app.jobs[0]->ex && app.jobs[0]->ex->peer_gone(); }));
  ASSERT_TRUE(loop.call([&] { app.abort(*app.jobs[0]); }));
  EXPECT_TRUE(loop.wait([&](const ServerStats& s) { return s.connections_open == 0; }));
  EXPECT_EQ(app.disconnects.load(), 1);
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// The documented contract (exchange.hpp, on_disconnect): "the exchange stays valid until the app
// finishes or aborts it (writes then fail)". A thinking app that answers after the client closed.
//
// Regression (was an engine bug). on_disconnect() is called on the peer's FIN
// (peer_eof_), but nothing sets failed_, and write() only checks failed_: the first write() after
// on_disconnect() returns kOk (the kernel accepts bytes for a peer that has closed; its RST comes
// back later) and finish() returns true. The connection does close afterwards (the next step sees
// peer_eof_ in kReadHead). Reproduction: GET /think, client close(), wait for on_disconnect, then
// from a task start_response + write("x", 1) -> kOk (expected kError) and finish() -> true.
// ClientCloseWhileWaitingForBodyIsReportedOnce hits the same thing after a body read failed.
TEST(Async, ClientCloseWhileThinkingThenWritesFailAndFinishCloses) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  c.close_now();
  ASSERT_TRUE(loop.wait([&](const ServerStats&) { return app.disconnects.load() == 1; }));
  ASSERT_TRUE(loop.call([&] { app.reply(*app.jobs[0], 200, "nobody listens"); }));
  EXPECT_TRUE(loop.wait([&](const ServerStats& s) { return s.connections_open == 0; }));
  struct Out {
    WriteStatus write;
    bool finish_ok;
    int aborts;
  };
  Out o = on_loop(loop, [&] {
    Job& j = *app.jobs[0];
    return Out{j.last_write, j.finish_ok, j.aborts};
  });
  EXPECT_EQ(int(o.write), int(WriteStatus::kError)) << "write() after on_disconnect() succeeded";
  EXPECT_FALSE(o.finish_ok);
  EXPECT_EQ(o.aborts, 0);
  EXPECT_EQ(app.disconnects.load(), 1);
}

// A reset is the connection dying under the app: on_abort (once), and the app lets go.
TEST(Async, ClientResetWhileThinkingAborts) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  c.reset_now();
  ASSERT_TRUE(loop.wait([&](const ServerStats& s) {
    return app.aborts.load() == 1 && s.connections_open == 0;
  }));
  EXPECT_LE(app.disconnects.load(), 1);
  EXPECT_EQ(on_loop(loop, [&] { return app.jobs[0]->aborts; }), 1);
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- stopping ----------------------------------------------------------------------------------------

TEST(Async, ImmediateStopAbortsEveryDetachedExchange) {
  ServerConfig cfg = async_config();
  cfg.output_high_watermark = 8192;
  AsyncApp app;
  EventLoop loop(cfg, app, kSmallBuf);
  Client thinking(loop.port());
  Client waiting_body(loop.port());
  Client paused(loop.port(), kSmallBuf);
  ASSERT_TRUE(thinking.send(get("/think")));
  ASSERT_TRUE(waiting_body.send("POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"));
  ASSERT_TRUE(paused.send(get("/stream?n=4000000&c=8000")));
  ASSERT_TRUE(loop.wait([&](const ServerStats&) {
    return app.requests.load() == 3 && app.pauses.load() >= 1;
  }));
  int64_t t0 = mono_ms();
  ASSERT_TRUE(loop.stop(false, 3000));
  EXPECT_LT(mono_ms() - t0, 2000);
  EXPECT_EQ(app.aborts.load(), 3);
  for (auto& j : app.jobs) EXPECT_EQ(j->aborts, 1) << "request " << j->seq;  // loop has exited
  EXPECT_EQ(app.finished.load(), 0);
  EXPECT_EQ(app.disconnects.load(), 0);
  EXPECT_TRUE(thinking.wait_closed(2000));
  EXPECT_TRUE(waiting_body.wait_closed(2000));
  EXPECT_TRUE(paused.wait_closed(5000));
  EXPECT_EQ(loop.snapshot().connections_open, 0u);
  EXPECT_EQ(app.errors.load(), 0);
}

TEST(Async, GracefulStopLetsADetachedExchangeFinish) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client idle(loop.port());
  ASSERT_TRUE(idle.send(get("/hello")));
  ASSERT_TRUE(idle.read_response().ok);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 2));
  loop.server().stop(true);
  // The idle connection gets one more answer, with a close (its client may have been sending).
  ASSERT_TRUE(idle.send(get("/hello")));
  Response last = idle.read_response();
  ASSERT_TRUE(last.ok) << last;
  EXPECT_EQ(last.header("Connection"), "close");
  EXPECT_TRUE(idle.wait_closed(2000));
  // The detached one is left alone while the app thinks.
  ASSERT_TRUE(loop.wait([&](const ServerStats& s) { return s.connections_open == 1; }));
  EXPECT_FALSE(loop.exited());
  ASSERT_TRUE(loop.call([&] { app.reply(*app.jobs[1], 200, "finished during the stop"); }));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "finished during the stop");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(3000));
  c.close_now();
  EXPECT_TRUE(loop.wait_exit(5000));
  EXPECT_EQ(loop.rc(), 0);
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_EQ(loop.snapshot().connections_open, 0u);
}

TEST(Async, GracefulTimeoutAbortsADetachedExchangeThatNeverFinishes) {
  ServerConfig cfg = async_config();
  cfg.graceful_timeout_ms = 200;
  AsyncApp app;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/think")));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  int64_t t0 = mono_ms();
  loop.server().stop(true);
  ASSERT_TRUE(loop.wait_exit(3000));
  EXPECT_GE(mono_ms() - t0, 150);
  EXPECT_EQ(app.aborts.load(), 1);
  EXPECT_TRUE(c.wait_closed(2000));
  EXPECT_EQ(loop.snapshot().connections_open, 0u);
}

// ---- pipelining, timers, deferral --------------------------------------------------------------------

TEST(Async, PipelinedRequestIsDispatchedOnlyAfterTheFirstFinished) {
  AsyncApp app;
  app.log_events = true;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  ASSERT_TRUE(c.send(get("/later?ms=200&id=a") + get("/hops?n=3&id=b") + get("/later?ms=0&id=c") +
                     get("/hops?n=1&id=d")));
  // While the first one thinks, nothing else is dispatched.
  ASSERT_TRUE(loop.wait([&](const ServerStats&) { return app.requests.load() >= 1; }));
  EXPECT_EQ(on_loop(loop, [&] { return app.events; }),
            std::vector<std::string>({"req:/later?ms=200&id=a"}));
  std::vector<std::string> bodies;
  for (int i = 0; i < 4; ++i) {
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << i << ": " << r;
    bodies.push_back(r.body);
  }
  EXPECT_EQ(bodies, std::vector<std::string>({"/later?ms=200&id=a", "/hops?n=3&id=b",
                                              "/later?ms=0&id=c", "/hops?n=1&id=d"}));
  EXPECT_EQ(on_loop(loop, [&] { return app.events; }),
            std::vector<std::string>({"req:/later?ms=200&id=a", "fin:/later?ms=200&id=a",
                                      "req:/hops?n=3&id=b", "fin:/hops?n=3&id=b",
                                      "req:/later?ms=0&id=c", "fin:/later?ms=0&id=c",
                                      "req:/hops?n=1&id=d", "fin:/hops?n=1&id=d"}));
  // No dispatch from inside the app's own finish() (checked by the app on every callback).
  EXPECT_TRUE(no_app_errors(loop, app));
}

TEST(Async, KeepAliveTimerDoesNotRunWhileTheAppThinks) {
  ServerConfig cfg = async_config();
  cfg.keep_alive_ms = 150;
  AsyncApp app;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  int64_t t0 = mono_ms();
  ASSERT_TRUE(c.send(get("/later?ms=600")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_GE(mono_ms() - t0, 550);
  EXPECT_EQ(r.body, "/later?ms=600");
  // Thinking twice as long again, on the same connection.
  ASSERT_TRUE(c.send(get("/later?ms=400")));
  Response r2 = c.read_response();
  ASSERT_TRUE(r2.ok) << r2;
  // Idle again: now keep-alive applies.
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_EQ(app.aborts.load(), 0);
}

TEST(Async, BodyTimeoutAppliesWhileTheAppWaitsForTheClient) {
  ServerConfig cfg = async_config();
  cfg.body_timeout_ms = 200;
  AsyncApp app;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  ASSERT_TRUE(c.send("POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"));
  ASSERT_TRUE(loop.wait([&](const ServerStats& s) {
    return app.aborts.load() == 1 && s.connections_open == 0;
  }));
  EXPECT_TRUE(c.wait_closed(2000));
}

// An app that asked for the body and then withdrew (want_body(false) from a task: a cancelled
// receive()) is thinking again, and a thinking app has no timeout.
//
// Regression (was an engine bug). Connection::want_body(false) only clears the flag (want_body(true) kicks,
// false does not), so the io timer armed by the step that ran with want_body on stays armed; the
// next drive() would disarm it (arm_timer_for_state: kInApp, !paused_, !want_body_), but none comes
// while the app thinks. After body_timeout_ms the connection is closed under the thinking app
// (on_abort) although it no longer waits for the client. Reproduction: body_timeout_ms=200, POST
// with Content-Length 100000 and no body, detach; task: want_body(true); next task (after a step):
// want_body(false); reply 800 ms later -> the client sees EOF at ~200 ms, on_abort is called.
TEST(Async, WantBodyOffFromATaskStopsTheBodyTimer) {
  ServerConfig cfg = async_config();
  cfg.body_timeout_ms = 200;
  AsyncApp app;
  EventLoop loop(cfg, app);
  Client c(loop.port());
  ASSERT_TRUE(c.send("POST /think HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"));
  ASSERT_TRUE(wait_requests(loop, app, 1));
  ASSERT_TRUE(loop.call([&] { app.ask(*app.jobs[0]); }));
  // A step with want_body on has run (the deferred one): the io timer is armed. Now withdraw.
  ASSERT_TRUE(loop.call([&] {
    Job& j = *app.jobs[0];
    j.asked = false;
    j.ex->want_body(false);
    loop.later(800, [&app, jp = &j] { app.reply(*jp, 200, "thought"); });
  }));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r << " aborts=" << app.aborts.load();
  EXPECT_EQ(r.body, "thought");
  EXPECT_EQ(app.aborts.load(), 0);
}

// Calls from tasks defer the state machine: one on_deferred() per batch, however many calls and
// connections, and next_timeout_ms() is 0 until the step ran.
TEST(Async, DeferredWorkIsSignalledOncePerBatchAndZeroesTheTimeout) {
  AsyncApp app;
  EventLoop loop(async_config(), app);
  Client a(loop.port()), b(loop.port());
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(a.send(get("/think")));
    ASSERT_TRUE(b.send(get("/think")));
    ASSERT_TRUE(wait_requests(loop, app, 2 * (round + 1)));
    struct Seen {
      int nt0 = 99, nt1 = 99, nt2 = 99;
      uint64_t d0 = 0, d1 = 0, d2 = 0, steps0 = 0, steps2 = 0;
    } s;
    ASSERT_TRUE(loop.call([&] {
      Job& ja = *app.jobs[size_t(2 * round)];
      Job& jb = *app.jobs[size_t(2 * round + 1)];
      s.nt0 = loop.server().next_timeout_ms();
      s.d0 = loop.deferred_calls();
      s.steps0 = loop.steps();
      app.reply(ja, 200, "first of the batch", /*chunked_out=*/true);  // start, 2 writes, finish
      s.d1 = loop.deferred_calls();
      s.nt1 = loop.server().next_timeout_ms();
      app.reply(jb, 200, "second of the batch");
      s.d2 = loop.deferred_calls();
      s.nt2 = loop.server().next_timeout_ms();
      s.steps2 = loop.steps();
    }));
    // Both connections are thinking detached: no timer at all.
    EXPECT_EQ(s.nt0, -1) << "round " << round;
    EXPECT_EQ(s.d1, s.d0 + 1) << "round " << round;
    EXPECT_EQ(s.d2, s.d0 + 1) << "round " << round;
    EXPECT_EQ(s.nt1, 0) << "round " << round;
    EXPECT_EQ(s.nt2, 0) << "round " << round;
    EXPECT_EQ(s.steps2, s.steps0);
    Response ra = a.read_response(), rb = b.read_response();
    ASSERT_TRUE(ra.ok) << ra;
    ASSERT_TRUE(rb.ok) << rb;
    EXPECT_EQ(ra.body, "first of the batch");
    EXPECT_EQ(rb.body, "second of the batch");
    // The step ran the deferred work: keep-alive timers are armed, nothing is deferred.
    ASSERT_TRUE(loop.wait([&](const ServerStats&) { return true; }));
    struct After {
      int nt;
      uint64_t d;
    } af = on_loop(loop, [&] { return After{loop.server().next_timeout_ms(), loop.deferred_calls()}; });
    EXPECT_GT(af.nt, 0) << "round " << round;
    EXPECT_LE(af.nt, 5000 + 10) << "round " << round;
    EXPECT_EQ(af.d, s.d0 + 1) << "round " << round;
  }
  EXPECT_TRUE(no_app_errors(loop, app));
}

// ---- steady state ------------------------------------------------------------------------------------

TEST(Async, SteadyStateStatsBalanceAndNothingGrowsPerRequest) {
  AsyncApp app;
  app.recycle = true;
  EventLoop loop(async_config(), app);
  Client c(loop.port());
  auto round = [&](int i) -> int {  // sends one round, returns how many responses it expects
    switch (i % 6) {
      case 0: return c.send(get("/hello")) ? 1 : -1;
      case 1: return c.send(post("/sum", "steady-state body")) ? 1 : -1;
      case 2:
        return c.send("POST /sum HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
                   ? 1 : -1;
      case 3: return c.send(get("/stream?n=3000&c=1000")) ? 1 : -1;
      case 4: return c.send(get("/hops?n=2")) ? 1 : -1;
      default: return c.send(get("/hello") + get("/hello")) ? 2 : -1;  // pipelined pair
    }
  };
  int sent_requests = 0;
  auto run_rounds = [&](int from, int count) {
    for (int i = from; i < from + count; ++i) {
      int n = round(i);
      ASSERT_GT(n, 0);
      sent_requests += n;
      for (int k = 0; k < n; ++k) {
        Response r = c.read_response();
        ASSERT_TRUE(r.ok && r.status == 200) << i << ": " << r;
      }
    }
  };
  run_rounds(0, 120);  // warm-up
  const int warmup_requests = sent_requests;
  struct Snap {
    ServerStats st;
    uint64_t allocs;
    size_t jobs;
  };
  auto snap = [&] {
    return on_loop(loop, [&] { return Snap{loop.server().stats(), g_counted_allocs.load(), app.jobs.size()}; });
  };
  Snap before = snap();
  run_rounds(120, 500);
  Snap after = snap();
  EXPECT_EQ(after.st.buffers_allocated, before.st.buffers_allocated);
  EXPECT_EQ(after.st.connections_allocated, before.st.connections_allocated);
  EXPECT_EQ(after.allocs, before.allocs) << "operator new on the loop thread during 500 rounds";
  EXPECT_EQ(after.jobs, before.jobs);
  EXPECT_EQ(after.st.requests_total - before.st.requests_total, uint64_t(sent_requests - warmup_requests));
  EXPECT_EQ(after.st.connections_open, 1u);
  // Connections come and go: recycled too.
  for (int i = 0; i < 50; ++i) {
    Client k(loop.port());
    ASSERT_TRUE(k.send(get("/hello", "Connection: close\r\n")));
    ASSERT_TRUE(k.read_response().ok);
    ASSERT_TRUE(k.wait_closed(2000));
  }
  Snap end = snap();
  EXPECT_LE(end.st.connections_allocated, 4u);
  EXPECT_LE(end.st.buffers_allocated, before.st.buffers_allocated + 4);
  c.close_now();
  ASSERT_TRUE(loop.stop(true));
  ServerStats fin = loop.snapshot();
  EXPECT_EQ(fin.connections_open, 0u);
  EXPECT_EQ(fin.connections_total, 51u);
  EXPECT_EQ(fin.requests_total, uint64_t(sent_requests) + 50);
  EXPECT_EQ(uint64_t(app.requests.load()), fin.requests_total);
  EXPECT_EQ(uint64_t(app.finished.load()), fin.requests_total);
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_EQ(app.disconnects.load(), 0);
  EXPECT_EQ(app.free_jobs.size(), app.jobs.size());  // every Job came back (loop has exited)
  EXPECT_EQ(app.errors.load(), 0) << ::testing::PrintToString(app.take_errors());
}

}  // namespace
}  // namespace fulmen
