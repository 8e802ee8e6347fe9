// Server and http1::Connection (src/core/server.cpp, src/core/http1/connection.cpp) end to end: a
// real fulmen::Server runs on its own thread over a loopback listener bound to port 0, with a C++
// AppHandler instead of Python, and the clients are raw sockets (server_support.hpp). Every wait is
// a poll with a deadline or a condition variable, never a fixed sleep.
//
// Allocation check: operator new is replaced in this binary (alloc_counter.cpp) and counts calls
// made on threads the test marks (the loop thread and pool threads), so "no heap allocation per
// request in steady state" is measured, not assumed. Buffer storage itself is malloc'd;
// BufferPool::allocated() (through Server::stats()) covers that.

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"
#include "core/base/log.hpp"
#include "core/http1/connection.hpp"
#include "core/server.hpp"
#include "server_support.hpp"

namespace fulmen {
namespace {

using namespace fulmen::test;
using http1::Exchange;
using http1::Header;

// ---- the app ---------------------------------------------------------------------------------------

// Per-exchange state of a paused response.
struct Paused {
  enum Kind { kStream, kFile } kind;
  uint64_t total = 0;
  uint64_t sent = 0;
  size_t chunk = 0;
};

// Routes on the path; see on_request. Thread-safe for pool mode (counters are atomic, state is per
// exchange). Allocation-free on /hello, /echo, /sum and /stats.
class TestApp : public http1::AppHandler {
 public:
  Server* server = nullptr;
  int file_fd = -1;
  std::atomic<int> requests{0}, pauses{0}, resumes{0}, aborts{0}, finished_streams{0};

  void on_request(Exchange& ex) noexcept override {
    requests.fetch_add(1);
    const http1::Request& r = ex.request();
    std::string_view path = r.path;
    if (path == "/hello") return reply(ex, 200, "hello");
    if (path == "/echo") return echo(ex);
    if (path == "/sum") return sum(ex);
    if (path == "/stats") return stats(ex);
    if (path == "/peer") return peer(ex);
    if (path == "/stream") return start_stream(ex);
    if (path == "/file") return start_file(ex);
    if (path == "/chunked") {
      ex.start_response(200, "", nullptr, 0);
      ex.write("abc", 3);
      ex.write("", 0);
      ex.write("defg", 4);
      ex.finish();
      return;
    }
    if (path == "/clamp") {
      Header h[] = {{"Content-Length", "5"}};
      ex.start_response(200, "", h, 1);
      ex.write("helloEXTRA", 10);
      ex.write("more", 4);
      ex.finish();
      return;
    }
    if (path == "/short") {
      Header h[] = {{"Content-Length", "10"}};
      ex.start_response(200, "", h, 1);
      ex.write("12345", 5);
      ex.finish();
      return;
    }
    if (path == "/noread") return reply(ex, 200, "no");
    if (path == "/nofinish") return;  // the engine must answer 500
    if (path == "/rendezvous") return rendezvous(ex);
    if (path == "/gate") return gate(ex);
    if (path == "/peek") return peek(ex);
    if (path == "/slow") {  // an app that takes its time (the loop thread, without a pool)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return reply(ex, 200, "slow");
    }
    ex.send_simple(404, "not found\n", false);
  }

  void on_resume(Exchange& ex) noexcept override {
    resumes.fetch_add(1);
    auto* st = static_cast<Paused*>(ex.app_state);
    if (!st) {
      ex.abort();
      return;
    }
    if (st->kind == Paused::kFile) {
      ex.app_state = nullptr;
      delete st;
      ex.finish();
      finished_streams.fetch_add(1);
      return;
    }
    produce(ex);
  }

  void on_abort(Exchange& ex) noexcept override {
    aborts.fetch_add(1);
    delete static_cast<Paused*>(ex.app_state);
    ex.app_state = nullptr;
  }

  // Waits until some response paused on output (kPause) at least `n` times in total.
  bool wait_paused(int n, int timeout_ms) {
    std::unique_lock<std::mutex> g(mu_);
    return cv_.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] { return pauses.load() >= n; });
  }

 private:
  // "addr:port" of the peer, then what trusted proxy headers said: " fwd=client:port scheme host".
  static void peer(Exchange& ex) {
    char buf[256];
    int n = std::snprintf(buf, sizeof buf, "%.*s:%d", int(ex.remote_addr().size()), ex.remote_addr().data(),
                          ex.remote_port());
    if (const http1::ForwardedInfo* f = ex.forwarded())
      n += std::snprintf(buf + n, sizeof buf - size_t(n), " fwd=%.*s:%d %.*s %.*s:%d", int(f->client.size()),
                         f->client.data(), f->client_port, int(f->scheme.size()), f->scheme.data(),
                         int(f->server_name.size()), f->server_name.data(), f->server_port);
    reply(ex, 200, std::string_view(buf, size_t(n)));
  }

  static void reply(Exchange& ex, int status, std::string_view body) {
    char len[24];
    int n = std::snprintf(len, sizeof len, "%zu", body.size());
    Header h[] = {{"Content-Type", "text/plain"}, {"Content-Length", std::string_view(len, size_t(n))}};
    ex.start_response(status, "", h, 2);
    ex.write(body.data(), body.size());
    ex.finish();
  }

  // Replies "<METHOD> <target>\n<body>".
  static void echo(Exchange& ex) {
    char out[70000];
    const http1::Request& r = ex.request();
    size_t n = 0;
    auto put = [&](std::string_view s) {
      std::memcpy(out + n, s.data(), s.size());
      n += s.size();
    };
    put(r.method);
    put(" ");
    put(r.target.substr(0, 1000));
    put("\n");
    for (;;) {
      std::string_view d;
      auto s = ex.body_peek(&d, true);
      if (s == Exchange::BodyStatus::kEof) break;
      if (s != Exchange::BodyStatus::kData) {
        char msg[64];
        int m = std::snprintf(msg, sizeof msg, "body error %d\n", int(ex.body_error()));
        ex.send_simple(400, std::string_view(msg, size_t(m)), true);
        return;
      }
      if (n + d.size() > sizeof out) {
        ex.send_simple(413, "too large for echo\n", true);
        return;
      }
      put(d);
      ex.body_consume(d.size());
    }
    reply(ex, 200, std::string_view(out, n));
  }

  // Replies "len=<n> fnv=<hex>" for bodies of any size.
  static void sum(Exchange& ex) {
    uint64_t len = 0, h = kFnvInit;
    for (;;) {
      std::string_view d;
      auto s = ex.body_peek(&d, true);
      if (s == Exchange::BodyStatus::kEof) break;
      if (s != Exchange::BodyStatus::kData) {
        ex.send_simple(400, "body error\n", true);
        return;
      }
      // Consume in two steps: the rest of the view must stay valid.
      size_t half = d.size() / 2;
      h = fnv1a(h, d.substr(0, half));
      ex.body_consume(half);
      std::string_view rest;
      if (ex.body_peek(&rest, false) != Exchange::BodyStatus::kData || rest != d.substr(half)) {
        ex.send_simple(500, "peek after partial consume changed\n", true);
        return;
      }
      h = fnv1a(h, rest);
      ex.body_consume(rest.size());
      len += d.size();
    }
    reply(ex, 200, sum_chars(len, h).view());
  }

  // Inline mode only (reads the server's counters on the loop thread, where they live).
  void stats(Exchange& ex) {
    ServerStats s = server->stats();
    char out[256];
    int n = std::snprintf(out, sizeof out,
                          "open=%llu total=%llu requests=%llu buffers=%llu conns=%llu allocs=%llu",
                          (unsigned long long)s.connections_open,
                          (unsigned long long)s.connections_total,
                          (unsigned long long)s.requests_total,
                          (unsigned long long)s.buffers_allocated,
                          (unsigned long long)s.connections_allocated,
                          (unsigned long long)g_counted_allocs.load());
    reply(ex, 200, std::string_view(out, size_t(n)));
  }

  // /stream?n=<bytes>&c=<chunk size>&cl=<1: Content-Length, 0: chunked>
  void start_stream(Exchange& ex) {
    std::string_view q = ex.request().query;
    auto* st = new Paused{Paused::kStream};
    st->total = uint64_t(query_int(q, "n", 1 << 20));
    st->chunk = size_t(std::clamp<int64_t>(query_int(q, "c", 8192), 1, 32768));
    char len[24];
    int n = std::snprintf(len, sizeof len, "%llu", (unsigned long long)st->total);
    Header h[] = {{"Content-Length", std::string_view(len, size_t(n))}};
    ex.start_response(200, "", h, query_int(q, "cl", 0) ? 1 : 0);
    ex.app_state = st;
    produce(ex);
  }

  void produce(Exchange& ex) {
    auto* st = static_cast<Paused*>(ex.app_state);
    char buf[32768];
    while (st->sent < st->total) {
      size_t n = size_t(std::min<uint64_t>(st->chunk, st->total - st->sent));
      for (size_t i = 0; i < n; ++i) buf[i] = pattern(st->sent + i);
      auto r = ex.write(buf, n);
      st->sent += n;  // accepted even on kPause
      if (r == Exchange::WriteStatus::kError) {
        ex.app_state = nullptr;
        delete st;
        ex.abort();
        return;
      }
      if (r == Exchange::WriteStatus::kPause) {
        note_pause();
        return;
      }
    }
    ex.app_state = nullptr;
    delete st;
    ex.finish();
    finished_streams.fetch_add(1);
  }

  // /file?off=<offset>&count=<n or -1>&cl=<1|0>
  void start_file(Exchange& ex) {
    std::string_view q = ex.request().query;
    int64_t off = query_int(q, "off", 0), count = query_int(q, "count", -1);
    bool cl = query_int(q, "cl", 0) != 0;
    int64_t size = lseek(file_fd, 0, SEEK_END);
    int64_t real = count < 0 ? size - off : count;
    char len[24];
    int n = std::snprintf(len, sizeof len, "%lld", (long long)real);
    Header h[] = {{"Content-Length", std::string_view(len, size_t(n))}};
    ex.start_response(200, "", h, cl ? 1 : 0);
    auto r = ex.send_file(file_fd, off, count);
    if (r == Exchange::WriteStatus::kPause) {
      ex.app_state = new Paused{Paused::kFile};
      note_pause();
      return;
    }
    if (r == Exchange::WriteStatus::kError) {
      ex.abort();
      return;
    }
    ex.finish();
    finished_streams.fetch_add(1);
  }

  // Pool mode: answers "together" only if two requests are inside the app at the same time.
  void rendezvous(Exchange& ex) {
    std::unique_lock<std::mutex> g(mu_);
    ++arrived_;
    cv_.notify_all();
    bool together = cv_.wait_for(g, std::chrono::seconds(5), [&] { return arrived_ >= 2; });
    g.unlock();
    reply(ex, 200, together ? "together" : "alone");
  }

  // Records how many response bytes each client in peek_fds has waiting unread right now.
  void peek(Exchange& ex) {
    {
      std::lock_guard<std::mutex> g(mu_);
      for (int fd : peek_fds) {
        int n = -1;
        ioctl(fd, FIONREAD, &n);
        peeked.push_back(n);
      }
    }
    reply(ex, 200, "peek");
  }

 public:
  std::vector<int> peek_fds;  // set before the /peek requests are sent
  std::vector<int> peeked;    // per /peek, per fd; guarded by mu_; read after the responses

 private:
  // Holds the calling thread (the loop, without a pool) until open_gate(), at most 5 s.
  void gate(Exchange& ex) {
    std::unique_lock<std::mutex> g(mu_);
    ++gated_;
    cv_.notify_all();
    cv_.wait_for(g, std::chrono::seconds(5), [&] { return gate_open_; });
    g.unlock();
    reply(ex, 200, "gate");
  }

 public:
  bool wait_gated(int timeout_ms) {
    std::unique_lock<std::mutex> g(mu_);
    return cv_.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] { return gated_ >= 1; });
  }
  void open_gate() {
    {
      std::lock_guard<std::mutex> g(mu_);
      gate_open_ = true;
    }
    cv_.notify_all();
  }

 private:
  void note_pause() {
    {
      std::lock_guard<std::mutex> g(mu_);
      pauses.fetch_add(1);
    }
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int gated_ = 0;
  bool gate_open_ = false;
};

class TestLogger : public base::Logger {
 public:
  void log(base::LogLevel, std::string_view m) noexcept override {
    std::lock_guard<std::mutex> g(mu_);
    lines_.emplace_back(m);
  }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> g(mu_);
    return lines_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

// ---- the server under test -----------------------------------------------------------------------

// Runs a Server on its own thread (plus `threads` pool threads in pool mode, serving lent
// connections the way src/bridge/module.cpp does) and tears everything down in order.
class Running {
 public:
  Running(ServerConfig cfg, TestApp& app, int sndbuf = 0) : app_(app) {
    lst_ = listen_loopback(sndbuf);
    cfg.listeners.push_back({lst_.fd, false});
    int threads = cfg.threads;
    server_ = std::make_unique<Server>(std::move(cfg), &app, &logger_);
    app.server = server_.get();
    loop_ = std::thread([this] {
      t_count_allocs = true;
      int rc = server_->run(nullptr);
      std::lock_guard<std::mutex> g(mu_);
      rc_ = rc;
      exited_ = true;
      cv_.notify_all();
    });
    if (threads > 1) {
      for (int i = 0; i < threads; ++i) {
        pool_.emplace_back([this] {
          t_count_allocs = true;
          while (http1::Connection* c = server_->pool_take()) c->serve_lent();
        });
      }
    }
  }
  ~Running() {
    if (!wait_exit(0)) {
      server_->stop(false);
      wait_exit(5000);
    }
    loop_.join();
    for (auto& t : pool_) t.join();
    server_.reset();
    if (lst_.fd >= 0) close(lst_.fd);
  }

  int port() const { return lst_.port; }
  Server& server() { return *server_; }
  TestLogger& logger() { return logger_; }
  int rc() {
    std::lock_guard<std::mutex> g(mu_);
    return rc_;
  }

  // Asks the server to stop and waits up to timeout_ms for run() to return.
  bool stop(bool graceful, int timeout_ms = 5000) {
    server_->stop(graceful);
    return wait_exit(timeout_ms);
  }
  bool wait_exit(int timeout_ms) {
    std::unique_lock<std::mutex> g(mu_);
    return cv_.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] { return exited_; });
  }
  // After run() returned: the server's counters (safe to read then).
  ServerStats stats() { return server_->stats(); }

 private:
  TestApp& app_;
  TestLogger logger_;
  Listener lst_;
  std::unique_ptr<Server> server_;
  std::thread loop_;
  std::vector<std::thread> pool_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool exited_ = false;
  int rc_ = -1;
};

// Parses "/stats" bodies: "open=1 total=1 ...".
uint64_t stat_field(const std::string& body, std::string_view key) {
  std::string k = std::string(key) + "=";
  size_t p = body.find(k);
  if (p == std::string::npos) return UINT64_MAX;
  return std::strtoull(body.c_str() + p + k.size(), nullptr, 10);
}

// A temp file holding pattern(0..size).
class TempFile {
 public:
  explicit TempFile(size_t size) {
    char name[] = "/tmp/fulmen-test-XXXXXX";
    fd_ = mkstemp(name);
    if (fd_ < 0) return;
    unlink(name);
    std::string data = pattern_string(size);
    size_t off = 0;
    while (off < size) {
      ssize_t n = ::write(fd_, data.data() + off, size - off);
      if (n <= 0) break;
      off += size_t(n);
    }
  }
  ~TempFile() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

// Small socket buffers on both sides so a response of ~1 MiB cannot fit in flight.
constexpr int kSmallSndbuf = 4096;
constexpr int kSmallRcvbuf = 4096;

// ---- basic request/response ------------------------------------------------------------------------

TEST(Server, HelloHasServerAndDateAndLength) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(get("/hello")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.version, "HTTP/1.1");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(r.header("Content-Length"), "5");
  EXPECT_EQ(r.header("Server"), "fulmen");
  EXPECT_EQ(r.header("Date").size(), 29u);
  EXPECT_FALSE(r.has("Connection"));
  EXPECT_FALSE(r.has("Transfer-Encoding"));
}

TEST(Server, KeepAliveReusesOneConnection) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(c.send(get("/echo?i=" + std::to_string(i))));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.body, "GET /echo?i=" + std::to_string(i) + "\n");
  }
  ASSERT_TRUE(c.send(get("/stats")));
  Response s = c.read_response();
  ASSERT_TRUE(s.ok) << s;
  EXPECT_EQ(stat_field(s.body, "total"), 1u) << s.body;
  EXPECT_EQ(stat_field(s.body, "open"), 1u) << s.body;
  EXPECT_EQ(stat_field(s.body, "requests"), 21u) << s.body;
  c.close_now();  // an idle connection would keep a graceful stop waiting for its next request
  ASSERT_TRUE(srv.stop(true));
  ServerStats st = srv.stats();
  EXPECT_EQ(st.connections_open, 0u);
  EXPECT_EQ(st.connections_total, 1u);
  EXPECT_EQ(st.connections_allocated, 1u);
  EXPECT_EQ(st.requests_total, 21u);
}

TEST(Server, Http10KeepAliveAndClose) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.version, "HTTP/1.1");
  EXPECT_EQ(r.header("Connection"), "keep-alive");
  ASSERT_TRUE(c.send("GET /hello HTTP/1.0\r\n\r\n"));  // 1.0 default: close
  r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(2000));
}

TEST(Server, ConnectionCloseRequestIsHonoured) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello", "Connection: close\r\n")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(2000));
  EXPECT_TRUE(c.pending().empty());
}

TEST(Server, PipelinedRequestsAnsweredInOrder) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  constexpr int kN = 64;
  std::string batch;
  for (int i = 0; i < kN; ++i) {
    switch (i % 3) {
      case 0: batch += get("/echo?i=" + std::to_string(i)); break;
      case 1: batch += post("/echo?i=" + std::to_string(i), "body" + std::to_string(i)); break;
      case 2:
        batch += "POST /echo?i=" + std::to_string(i) +
                 " HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nchk\r\n0\r\n\r\n";
        break;
    }
  }
  ASSERT_TRUE(c.send(batch));  // one write
  for (int i = 0; i < kN; ++i) {
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << "response " << i << ": " << r;
    std::string want = (i % 3 == 0 ? "GET" : "POST") + std::string(" /echo?i=") + std::to_string(i) + "\n" +
                       (i % 3 == 1 ? "body" + std::to_string(i) : i % 3 == 2 ? "chk" : "");
    EXPECT_EQ(r.body, want) << "response " << i;
  }
  EXPECT_TRUE(c.quiet_for(50));
  EXPECT_TRUE(c.pending().empty());
}

// Responses completed while one batch of events is dispatched leave together after it
// (Server::cork): a client is woken once for several responses, not once per write.
TEST(Server, ResponsesOfOneEventBatchLeaveAfterIt) {
  ServerConfig cfg = test_config();
  cfg.keep_alive_ms = 1000;  // outlasts the set-up even on a loaded machine
  TestApp app;
  Running srv(cfg, app);
  Client a(srv.port()), b(srv.port()), g(srv.port());
  for (Client* c : {&a, &b}) {  // established and idle before the loop is held
    ASSERT_TRUE(c->send(get("/hello")));
    ASSERT_TRUE(c->read_response().ok);
  }
  app.peek_fds = {a.fd(), b.fd()};
  ASSERT_TRUE(g.send(get("/gate")));
  ASSERT_TRUE(app.wait_gated(5000));  // the loop thread is inside the app now
  ASSERT_TRUE(a.send(get("/peek")));
  ASSERT_TRUE(b.send(get("/peek")));
  app.open_gate();  // the next epoll_wait returns both requests in one batch
  Response ra = a.read_response(), rb = b.read_response();
  ASSERT_TRUE(ra.ok && rb.ok);
  EXPECT_EQ(ra.body, "peek");
  EXPECT_EQ(rb.body, "peek");
  ASSERT_TRUE(g.read_response().ok);
  // Whichever request ran second found nothing from the first one's response yet.
  EXPECT_EQ(app.peeked, (std::vector<int>{0, 0, 0, 0}));
  // And the connections were put back on their keep-alive timers after the batch.
  int64_t t0 = mono_ms();
  EXPECT_TRUE(a.wait_closed(3000));
  EXPECT_TRUE(b.wait_closed(3000));
  EXPECT_GE(mono_ms() - t0, 500);
}

// A slow app does not hold the responses of its batch back for long: once the oldest corked
// response is Server::kMaxCorkNs old, the end of the next event sends everything corked, whether
// that event corked its own response (keep-alive) or wrote it at once (Connection: close).
class CorkLimit : public ::testing::TestWithParam<bool> {};

TEST_P(CorkLimit, CorkedResponsesLeaveOnceTheBatchRunsLong) {
  bool slow_closes = GetParam();
  ServerConfig cfg = test_config();
  TestApp app;
  Running srv(cfg, app);
  Client a(srv.port()), b(srv.port()), c(srv.port()), g(srv.port());
  for (Client* x : {&a, &b, &c}) {
    ASSERT_TRUE(x->send(get("/hello")));
    ASSERT_TRUE(x->read_response().ok);
  }
  app.peek_fds = {a.fd()};
  ASSERT_TRUE(g.send(get("/gate")));
  ASSERT_TRUE(app.wait_gated(5000));
  // One batch, in this order: a fast response, a 5 ms one, then /peek.
  ASSERT_TRUE(a.send(get("/hello")));
  ASSERT_TRUE(b.send(get("/slow", slow_closes ? "Connection: close\r\n" : "")));
  ASSERT_TRUE(c.send(get("/peek")));
  app.open_gate();
  // /peek's answer first: a stays unread until /peek has looked at it.
  Response rc = c.read_response(), ra = a.read_response(), rb = b.read_response();
  ASSERT_TRUE(ra.ok && rb.ok && rc.ok);
  EXPECT_EQ(rb.body, "slow");
  ASSERT_TRUE(g.read_response().ok);
  // The fast response had left when /peek ran (without the limit: 0 bytes).
  ASSERT_EQ(app.peeked.size(), 1u);
  EXPECT_GT(app.peeked[0], 0);
}

INSTANTIATE_TEST_SUITE_P(Server, CorkLimit, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "SlowOneCloses" : "SlowOneKeepsAlive"; });

TEST(Server, BodyAndNextRequestInOneSegment) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(post("/echo", "0123456789") + get("/hello")));
  Response a = c.read_response(), b = c.read_response();
  ASSERT_TRUE(a.ok && b.ok) << a << b;
  EXPECT_EQ(a.body, "POST /echo\n0123456789");
  EXPECT_EQ(b.body, "hello");
}

TEST(Server, ContentLengthBodyArrivingByteByByte) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  std::string req = post("/echo", "abcdefghij");
  for (char ch : req) ASSERT_TRUE(c.send(std::string_view(&ch, 1)));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "POST /echo\nabcdefghij");
}

TEST(Server, UnknownPathGets404AndKeepsConnection) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/nope") + get("/hello")));
  Response a = c.read_response(), b = c.read_response();
  ASSERT_TRUE(a.ok && b.ok) << a << b;
  EXPECT_EQ(a.status, 404);
  EXPECT_EQ(a.body, "not found\n");
  EXPECT_EQ(b.body, "hello");
}

TEST(Server, HandlerThatNeverFinishesGets500AndClose) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/nofinish")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(2000));
}

// ---- request bodies --------------------------------------------------------------------------------

TEST(Server, ChunkedRequestBodyIsDecoded) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  std::string req =
      "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n6;name=value\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n";
  ASSERT_TRUE(c.send(req + get("/hello")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "POST /echo\nhello world0123456789");
  ASSERT_TRUE(is_hello(c.read_response()));  // the framing ended exactly after the trailer section
}

TEST(Server, ChunkedRequestBodyByteByByte) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  std::string req =
      "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n1\r\nd\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
  for (char ch : req) ASSERT_TRUE(c.send(std::string_view(&ch, 1)));
  ASSERT_TRUE(c.send(get("/hello")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "POST /echo\nabcd0123456789abcdef");
  ASSERT_TRUE(is_hello(c.read_response()));
}

// Sends `wire` (a /sum request, then a /hello) from a second thread, since the server answers
// while the client is still sending, and expects /sum's digest of `body`, then "hello": the body's
// framing ended exactly where it should.
void expect_sum_then_hello(Client& c, const std::string& wire, const std::string& body) {
  std::thread sender([&] { c.send(wire); });
  Response r = c.read_response();
  sender.join();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, sum_text(body));
  EXPECT_TRUE(is_hello(c.read_response()));
}

TEST(Server, LargeChunkedBodyLargerThanInputBuffer) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.buffer_size = 8192;  // the body is many times the input buffer
  Running srv(cfg, app);
  Client c(srv.port());
  std::string body;
  std::string framed;
  uint64_t k = 0;
  for (size_t size : {1u, 7u, 4096u, 8000u, 100u, 30000u, 5u, 65536u, 3u}) {
    std::string chunk;
    for (size_t i = 0; i < size; ++i) chunk += pattern(k++);
    char hex[20];
    std::snprintf(hex, sizeof hex, "%zx", size);
    framed += std::string(hex) + "\r\n" + chunk + "\r\n";
    body += chunk;
  }
  framed += "0\r\n\r\n";
  expect_sum_then_hello(
      c, "POST /sum HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + get("/hello"), body);
}

TEST(Server, LargeContentLengthBody) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.buffer_size = 4096;
  Running srv(cfg, app);
  Client c(srv.port());
  std::string body(300000, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = pattern(i * 3);
  expect_sum_then_hello(c, post("/sum", body) + get("/hello"), body);
}

// Inline mode reads a chunked body that fits in the buffer before calling the app, so a malformed
// one is refused by the engine like a malformed head, and the app never runs.
TEST(Server, MalformedSmallChunkedBodyIsRejectedBeforeTheApp) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "zz\r\nhello\r\n0\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, "Bad Request: invalid chunk size\n");
  EXPECT_TRUE(c.wait_closed(2000));
}

// In pool mode (and for bodies larger than the buffer) the app streams the body itself and sees
// the error as a body error.
TEST(ServerPool, MalformedChunkedBodyIsABodyErrorAndCloses) {
  ServerConfig cfg = test_config();
  cfg.threads = 2;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "zz\r\nhello\r\n0\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, "body error " + std::to_string(int(Exchange::BodyError::kMalformed)) + "\n");
  EXPECT_TRUE(c.wait_closed(2000));
}

// Regression (was an engine bug): with a small Content-Length body the engine waits for the whole body before calling
// the app (State::kReadBody). If the client's FIN arrives with its last bytes, on_io() sets
// peer_eof_ but the short read clears readable_, and step_read_body() returns kWait without looking
// at peer_eof_; edge-triggered epoll reports nothing more, so the connection is held until
// body_timeout_ms (60 s by default) instead of being closed at once.
TEST(Server, ClientGoneMidBodyIsDisconnected) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-some"));
  c.shutdown_write();
  // Either the app is told (kDisconnected, answered here with a 400) or, if the engine waits for a
  // small body before calling the app, nobody is told and the connection just closes. Both must
  // happen promptly: the half-close is known at once, long before the 5 s body timeout.
  int64_t t0 = mono_ms();
  ASSERT_TRUE(c.wait_closed(3000));
  EXPECT_LT(mono_ms() - t0, 1500);
  if (!c.pending().empty()) {
    Response r = c.read_response(100);
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.body, "body error " + std::to_string(int(Exchange::BodyError::kDisconnected)) + "\n");
  }
}

TEST(Server, UnreadBodyIsDiscardedAndConnectionReused) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  std::string body(200000, 'x');  // several reads' worth, under the discard limit
  std::thread sender([&] { c.send(post("/noread", body) + get("/hello")); });
  Response a = c.read_response();
  Response b = c.read_response();
  sender.join();
  ASSERT_TRUE(a.ok) << a;
  EXPECT_EQ(a.body, "no");
  EXPECT_FALSE(a.has("Connection"));
  ASSERT_TRUE(b.ok) << b;
  EXPECT_EQ(b.body, "hello");
}

TEST(Server, HugeUnreadBodyClosesInsteadOfDiscarding) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  // Over the 1 MiB the engine is willing to drop: the response says close, then the server closes.
  ASSERT_TRUE(c.send("POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\nxyz"));
  Response a = c.read_response();
  ASSERT_TRUE(a.ok) << a;
  EXPECT_EQ(a.body, "no");
  EXPECT_TRUE(c.wait_closed(3000));
}

// ---- 100-continue ----------------------------------------------------------------------------------

size_t count_of(const std::string& hay, std::string_view needle) {
  size_t n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

TEST(Server, ContinueSentOnceOnFirstBodyPeek) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"));
  Response cont = c.read_response();
  ASSERT_TRUE(cont.ok) << cont;
  EXPECT_EQ(cont.status, 100);
  EXPECT_TRUE(cont.headers.empty());
  ASSERT_TRUE(c.send("01234"));
  // The app is now waiting in a second body_peek: no second 100 may come.
  EXPECT_TRUE(c.quiet_for(100));
  ASSERT_TRUE(c.send("56789"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /echo\n0123456789");
  EXPECT_FALSE(r.has("Connection"));
  // And the connection is reusable.
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(is_hello(c.read_response()));
}

TEST(Server, NoContinueWhenBodyAlreadyArrived) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /echo\nabc");
}

TEST(Server, NoContinueWhenAppDoesNotReadAndConnectionCloses) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);  // the final status, not 100
  EXPECT_EQ(r.body, "no");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_EQ(count_of(c.pending(), "100 Continue"), 0u);
}

// ---- responses -------------------------------------------------------------------------------------

TEST(Server, HeadGetsHeadersButNoBody) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"));
  Response h = c.read_response(5000, /*head=*/true);
  ASSERT_TRUE(h.ok) << h;
  EXPECT_EQ(h.header("Content-Length"), "5");
  ASSERT_TRUE(c.send("HEAD /chunked HTTP/1.1\r\nHost: t\r\n\r\n"));
  Response h2 = c.read_response(5000, true);
  ASSERT_TRUE(h2.ok) << h2;
  // The framing GET would have had (RFC 9110 section 9.3.2), but no body.
  EXPECT_EQ(h2.header("Transfer-Encoding"), "chunked");
  EXPECT_FALSE(h2.has("Connection"));
  // If any body byte had been sent it would now precede the next response.
  ASSERT_TRUE(c.send(get("/hello")));
  Response g = c.read_response();
  ASSERT_TRUE(g.ok) << g;
  EXPECT_EQ(g.status, 200);
  EXPECT_EQ(g.body, "hello");
}

TEST(Server, HeadOfStreamedResponseSendsNoBody) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("HEAD /stream?n=100000&cl=1 HTTP/1.1\r\nHost: t\r\n\r\n" + get("/hello")));
  Response h = c.read_response(5000, true);
  ASSERT_TRUE(h.ok) << h;
  EXPECT_EQ(h.header("Content-Length"), "100000");
  ASSERT_TRUE(is_hello(c.read_response()));
}

TEST(Server, ChunkedResponseWithoutContentLength) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/chunked")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Transfer-Encoding"), "chunked");
  EXPECT_FALSE(r.has("Content-Length"));
  EXPECT_EQ(r.body, "abcdefg");
  ASSERT_TRUE(c.send(get("/hello")));
  EXPECT_EQ(c.read_response().body, "hello");
}

TEST(Server, Http10WithoutLengthIsCloseDelimited) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_FALSE(r.has("Transfer-Encoding"));
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_EQ(r.body, "abcdefg");
  EXPECT_TRUE(c.eof());
}

TEST(Server, ContentLengthClampsExtraBytes) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/clamp") + get("/hello")));
  ASSERT_TRUE(is_hello(c.read_response()));
  Response n = c.read_response();
  ASSERT_TRUE(n.ok) << n;  // would be garbage if "EXTRA"/"more" had been sent
  EXPECT_EQ(n.status, 200);
  EXPECT_EQ(n.body, "hello");
}

TEST(Server, ShortBodyClosesConnection) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/short")));
  Response r = c.read_response(3000);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Length"), "10");
  EXPECT_EQ(r.body, "12345");
  EXPECT_TRUE(c.eof());
}

// ---- parse errors ----------------------------------------------------------------------------------

struct BadRequest {
  const char* name;
  std::string bytes;
  int status;
};

TEST(Server, ParseErrorsGiveStatusAndClose) {
  ServerConfig cfg = test_config();
  cfg.limits.max_request_line = 100;
  cfg.limits.max_fields = 4;
  cfg.limits.max_body = 1000;
  const BadRequest cases[] = {
      {"missing host", "GET / HTTP/1.1\r\n\r\n", 400},
      {"bad version", "GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505},
      {"unknown coding", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"cl and te", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
      {"line too long", "GET /" + std::string(200, 'a') + " HTTP/1.1\r\nHost: t\r\n\r\n", 414},
      {"too many fields", "GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431},
      {"body too large", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n", 413},
      {"obs-fold", "GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400},
      {"bare LF", "GET / HTTP/1.1\nHost: t\n\n", 400},
  };
  TestApp app;
  Running srv(cfg, app);
  for (const auto& bc : cases) {
    SCOPED_TRACE(bc.name);
    Client c(srv.port());
    ASSERT_TRUE(c.send(bc.bytes));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.status, bc.status);
    EXPECT_EQ(r.header("Connection"), "close");
    EXPECT_EQ(r.header("Content-Length"), std::to_string(r.body.size()));
    EXPECT_TRUE(c.wait_closed(3000));
  }
  EXPECT_EQ(app.requests.load(), 0);  // none of them reached the app
}

TEST(Server, GoodThenBadPipelined) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello") + "GET / HTTP/1.1\r\n\r\n" + get("/hello")));
  ASSERT_TRUE(is_hello(c.read_response()));
  Response b = c.read_response();
  ASSERT_TRUE(b.ok) << b;
  EXPECT_EQ(b.status, 400);
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_TRUE(c.pending().empty());  // the request after the bad one is never answered
}

// Regression (was an engine bug): when a read fills the input buffer exactly with an unfinished head, the parser says
// kIncomplete (it cannot know yet), read_some() then reports kFull and the connection is closed
// with no response at all, instead of 431.
TEST(Server, HeadLargerThanBufferIs431) {
  ServerConfig cfg = test_config();
  cfg.buffer_size = 1024;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  std::string big = "GET / HTTP/1.1\r\nHost: t\r\n";
  while (big.size() < 2000) big += "X-Pad: " + std::string(50, 'p') + "\r\n";
  ASSERT_TRUE(c.send(big + "\r\n"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 431);
  EXPECT_TRUE(c.wait_closed(3000));
}

// A head of buffer_size - 1 and exactly buffer_size bytes followed by a body: both heads are
// accepted, so their bodies must be readable too.
std::string head_of_size(size_t size, size_t body_len) {
  std::string h = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(body_len) + "\r\nX-Pad: ";
  size_t fixed = h.size() + 4;  // "\r\n\r\n"
  h += std::string(size - fixed, 'p');
  h += "\r\n\r\n";
  return h;
}

TEST(Server, HeadOneUnderBufferSizeWithBody) {
  ServerConfig cfg = test_config();
  cfg.buffer_size = 1024;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  std::string h = head_of_size(1023, 5);
  ASSERT_EQ(h.size(), 1023u);
  ASSERT_TRUE(c.send(h));
  ASSERT_TRUE(c.quiet_for(20));  // let the head be parsed alone, then the body arrives later
  ASSERT_TRUE(c.send("12345"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body.substr(r.body.size() - 5), "12345");
}

// Regression (was an engine bug): a head of exactly buffer_size bytes is accepted, but leaves no room to read its body:
// body_peek() gets kFull from read_some() and reports BodyError::kDisconnected, so the app answers
// an error to a valid request.
TEST(Server, HeadExactlyBufferSizeWithBody) {
  ServerConfig cfg = test_config();
  cfg.buffer_size = 1024;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  std::string h = head_of_size(1024, 5);
  ASSERT_EQ(h.size(), 1024u);
  ASSERT_TRUE(c.send(h));
  c.quiet_for(20);  // let the head be parsed alone
  ASSERT_TRUE(c.send("12345"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  // Either the head is refused as too large (431), or its body is read; never a body error.
  if (r.status != 431) {
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.body.substr(r.body.size() - 5), "12345");
  }
}

// ---- timeouts --------------------------------------------------------------------------------------

TEST(Server, KeepAliveTimeoutClosesIdleConnection) {
  ServerConfig cfg = test_config();
  cfg.keep_alive_ms = 100;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(c.read_response().ok);
  int64_t t0 = mono_ms();
  ASSERT_TRUE(c.wait_closed(3000));
  int64_t took = mono_ms() - t0;
  EXPECT_GE(took, 80);
  EXPECT_LT(took, 2000);
  EXPECT_TRUE(c.pending().empty());
}

TEST(Server, KeepAliveTimeoutClosesConnectionThatNeverSpoke) {
  ServerConfig cfg = test_config();
  cfg.keep_alive_ms = 100;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  ASSERT_TRUE(c.wait_closed(3000));
}

TEST(Server, KeepAliveTimerRestartsAfterEachRequest) {
  ServerConfig cfg = test_config();
  cfg.keep_alive_ms = 300;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  int64_t t0 = mono_ms();
  // Requests every ~100 ms for ~600 ms: twice the keep-alive, never idle for long.
  while (mono_ms() - t0 < 600) {
    ASSERT_TRUE(c.send(get("/hello")));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << "after " << (mono_ms() - t0) << " ms: " << r;
    ASSERT_TRUE(c.quiet_for(100));
  }
}

TEST(Server, HeaderTimeoutClosesPartialHead) {
  ServerConfig cfg = test_config();
  cfg.header_timeout_ms = 150;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  int64_t t0 = mono_ms();
  ASSERT_TRUE(c.send("GET / HTTP/1.1\r\nHost: t\r\n"));
  ASSERT_TRUE(c.wait_closed(3000));
  EXPECT_GE(mono_ms() - t0, 120);
  EXPECT_EQ(app.requests.load(), 0);
}

TEST(Server, SlowlorisDripDoesNotExtendHeaderTimeout) {
  ServerConfig cfg = test_config();
  cfg.header_timeout_ms = 200;
  cfg.keep_alive_ms = 5000;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  std::string head = "GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + std::string(1000, 's');
  int64_t t0 = mono_ms();
  size_t i = 0;
  // One byte every 20 ms; each byte is progress, but the head as a whole must finish in 200 ms.
  while (!c.eof() && mono_ms() - t0 < 3000 && i < head.size()) {
    if (!c.send(std::string_view(&head[i++], 1))) break;
    c.read_more(20);
  }
  ASSERT_TRUE(c.wait_closed(3000));
  int64_t took = mono_ms() - t0;
  EXPECT_GE(took, 150);
  EXPECT_LT(took, 1500);
}

TEST(Server, SlowButSteadyDownloadIsNotCutByBodyTimeout) {
  ServerConfig cfg = test_config();
  cfg.body_timeout_ms = 100;  // a stall limit, not a limit on the whole response
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  c.read_size = 4096;
  c.read_gap_ms = 10;  // at most 4 KiB per 10 ms: 160 KiB take 400 ms, four body timeouts
  int64_t t0 = mono_ms();
  ASSERT_TRUE(c.send(get("/stream?n=163840&c=8192")));
  Response r = c.read_response(10000);
  ASSERT_TRUE(r.ok) << r << " after " << (mono_ms() - t0) << " ms";
  EXPECT_GT(mono_ms() - t0, 200);  // the download really outlasted the timeout
  EXPECT_EQ(r.body.size(), 163840u);
  EXPECT_TRUE(matches_pattern(r.body, 0));
}

TEST(Server, StalledReaderIsCutByBodyTimeout) {
  ServerConfig cfg = test_config();
  cfg.body_timeout_ms = 150;
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  ASSERT_TRUE(c.send(get("/stream?n=4000000")));
  ASSERT_TRUE(app.wait_paused(1, 3000));
  // The client never reads: the server must give up on it and tell the app.
  int64_t t0 = mono_ms();
  while (app.aborts.load() == 0 && mono_ms() - t0 < 3000) poll(nullptr, 0, 5);  // until the abort
  EXPECT_EQ(app.aborts.load(), 1);
  EXPECT_TRUE(c.wait_closed(3000));
}

// ---- flow control ----------------------------------------------------------------------------------

class StreamTest : public ::testing::TestWithParam<StreamCase> {};

TEST_P(StreamTest, PausesThenResumesAndDeliversEveryByteInOrder) {
  const StreamCase& sc = GetParam();
  ServerConfig cfg = test_config();
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  ASSERT_TRUE(c.send(get(stream_target(sc)) + get("/hello")));
  // Read nothing until the producer has been told to pause: the reader is slow.
  ASSERT_TRUE(app.wait_paused(1, 5000));
  Response r = c.read_response(10000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Transfer-Encoding"), sc.content_length ? "" : "chunked");
  EXPECT_EQ(r.body.size(), sc.total);
  EXPECT_TRUE(matches_pattern(r.body, 0));
  EXPECT_GE(app.resumes.load(), 1);
  ASSERT_TRUE(is_hello(c.read_response()));
  // Only now: the last body byte can reach us before the app's finish() returns, but the next
  // response is produced on the loop thread after it.
  EXPECT_EQ(app.finished_streams.load(), 1);
  EXPECT_EQ(app.aborts.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Server, StreamTest,
    ::testing::Values(StreamCase{"copied_chunked", 1 << 20, 8192, false},
                      StreamCase{"copied_length", 1 << 20, 3000, true},
                      StreamCase{"direct_chunked", 1 << 20, 20000, false},  // >= 16 KiB: writev path
                      StreamCase{"direct_length", 1 << 20, 32768, true}),
    [](const auto& info) { return std::string(info.param.name); });

// ---- sendfile --------------------------------------------------------------------------------------

TEST(Server, SendFileRangeWithContentLength) {
  TempFile f(300000);
  ASSERT_GE(f.fd(), 0);
  TestApp app;
  app.file_fd = f.fd();
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/file?off=1000&count=5000&cl=1") + get("/hello")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Content-Length"), "5000");
  EXPECT_EQ(r.body.size(), 5000u);
  EXPECT_TRUE(matches_pattern(r.body, 1000));
  ASSERT_TRUE(is_hello(c.read_response()));
}

TEST(Server, SendFileChunkedToEndWithPause) {
  TempFile f(1 << 20);
  ASSERT_GE(f.fd(), 0);
  ServerConfig cfg = test_config();
  cfg.output_high_watermark = 4096;
  TestApp app;
  app.file_fd = f.fd();
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  ASSERT_TRUE(c.send(get("/file?off=7&count=-1&cl=0") + get("/hello")));
  ASSERT_TRUE(app.wait_paused(1, 5000));
  Response r = c.read_response(10000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.header("Transfer-Encoding"), "chunked");
  EXPECT_EQ(r.body.size(), size_t((1 << 20) - 7));
  EXPECT_TRUE(matches_pattern(r.body, 7));
  EXPECT_GE(app.resumes.load(), 1);
  ASSERT_TRUE(is_hello(c.read_response()));
}

TEST(Server, SendFileCountClampedToContentLength) {
  TempFile f(10000);
  TestApp app;
  app.file_fd = f.fd();
  Running srv(test_config(), app);
  Client c(srv.port());
  // The app declares the full count but the engine must not send more than Content-Length.
  ASSERT_TRUE(c.send(get("/file?off=0&count=-1&cl=1") + get("/hello")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body.size(), 10000u);
  ASSERT_TRUE(is_hello(c.read_response()));
}

// ---- shutdown --------------------------------------------------------------------------------------

// Waits until the loop has begun a graceful stop (stopping() is an atomic, readable from here).
bool wait_stopping(Running& srv, int timeout_ms = 3000) {
  int64_t deadline = mono_ms() + timeout_ms;
  while (!srv.server().stopping()) {
    if (mono_ms() > deadline) return false;
    poll(nullptr, 0, 1);
  }
  return true;
}

// A graceful stop does not close an idle keep-alive connection at once: its client may be sending
// the next request at that very moment, and would see EOF or a reset for it. The request that
// comes is answered, with "Connection: close", and then the connection closes.
TEST(Server, GracefulStopAnswersTheNextRequestOfAnIdleConnectionWithClose) {
  TestApp app;
  Running srv(test_config(), app);  // keep-alive 5 s
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(c.read_response().ok);
  int64_t t0 = mono_ms();
  srv.server().stop(true);
  ASSERT_TRUE(wait_stopping(srv));
  ASSERT_TRUE(c.send(get("/hello")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.wait_closed(2000));
  EXPECT_TRUE(c.pending().empty());
  EXPECT_TRUE(srv.wait_exit(3000));
  EXPECT_LT(mono_ms() - t0, 3000);  // not the keep-alive timeout: the close ended it
  EXPECT_EQ(srv.rc(), 0);
  EXPECT_EQ(srv.stats().connections_open, 0u);
}

// The same request sent before the stop but not yet read by the loop: answered too.
TEST(Server, GracefulStopServesARequestAlreadyInTheSocket) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(c.read_response().ok);
  // Hold the loop in the app (another connection's request), so that the second request waits
  // unread in c's socket when the stop is requested: deterministic, whatever the machine's speed.
  Client holder(srv.port());
  ASSERT_TRUE(holder.send(get("/gate")));
  ASSERT_TRUE(app.wait_gated(5000));
  ASSERT_TRUE(c.send(get("/hello")));
  srv.server().stop(true);
  app.open_gate();
  Response held = holder.read_response();
  ASSERT_TRUE(held.ok) << held;
  EXPECT_EQ(held.body, "gate");
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "hello");
  EXPECT_EQ(r.header("connection"), "close");  // read after the stop: the last on its connection
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_TRUE(holder.wait_closed(3000));
  EXPECT_TRUE(srv.wait_exit(3000));
}

// A client that sends nothing more is closed at its keep-alive timeout (or the graceful deadline,
// whichever is first), without any bytes, and the stop then completes.
TEST(Server, GracefulStopClosesAnIdleConnectionAtItsKeepAliveTimeout) {
  ServerConfig cfg = test_config();
  cfg.keep_alive_ms = 500;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(c.read_response().ok);
  int64_t t0 = mono_ms();
  srv.server().stop(true);
  ASSERT_TRUE(wait_stopping(srv));
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_GE(mono_ms() - t0, 250);  // it was kept, not closed at the stop
  EXPECT_LT(mono_ms() - t0, 2000);  // and its deadline was not pushed back by the stop
  EXPECT_TRUE(c.pending().empty());
  EXPECT_TRUE(srv.wait_exit(3000));
  EXPECT_EQ(srv.rc(), 0);
  EXPECT_EQ(srv.stats().connections_open, 0u);
}

TEST(Server, GracefulStopClosesAnIdleConnectionAtTheGracefulDeadline) {
  ServerConfig cfg = test_config();  // keep-alive 5 s
  cfg.graceful_timeout_ms = 300;
  TestApp app;
  Running srv(cfg, app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/hello")));
  ASSERT_TRUE(c.read_response().ok);
  int64_t t0 = mono_ms();
  ASSERT_TRUE(srv.stop(true, 3000));
  EXPECT_GE(mono_ms() - t0, 250);
  EXPECT_TRUE(c.wait_closed(1000));
  EXPECT_TRUE(c.pending().empty());
}

// A supervisor's pipe gets heartbeat bytes from the loop's own timer (an idle server beats too)
// and one retire notice once max_requests requests were served.
TEST(Server, SupervisorPipeGetsBeatsAndOneRetireNotice) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
  ServerConfig cfg = test_config();
  cfg.supervisor_fd = p[1];
  cfg.heartbeat_interval_ms = 50;
  cfg.max_requests = 3;
  TestApp app;
  std::string got;
  auto read_pipe = [&] {
    char buf[256];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof buf)) > 0) got.append(buf, size_t(n));
  };
  auto wait_for = [&](auto pred) {
    int64_t deadline = mono_ms() + 5000;
    for (read_pipe(); !pred() && mono_ms() < deadline; read_pipe()) poll(nullptr, 0, 10);
    return pred();
  };
  {
    Running srv(cfg, app);
    auto beats = [&] { return size_t(std::count(got.begin(), got.end(), Server::kBeatByte)); };
    ASSERT_TRUE(wait_for([&] { return beats() >= 3; })) << got;  // idle, and beating
    EXPECT_EQ(got.find(Server::kRetireByte), std::string::npos);
    Client c(srv.port());
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(c.send(get("/hello")));
      ASSERT_TRUE(c.read_response().ok);
    }
    read_pipe();
    EXPECT_EQ(got.find(Server::kRetireByte), std::string::npos) << "after 2 of 3 requests";
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(c.send(get("/hello")));
      ASSERT_TRUE(c.read_response().ok);  // it goes on serving until it is told to stop
    }
    ASSERT_TRUE(wait_for([&] { return got.find(Server::kRetireByte) != std::string::npos; })) << got;
    size_t before = beats();
    ASSERT_TRUE(wait_for([&] { return beats() >= before + 2; })) << got;
    EXPECT_EQ(std::count(got.begin(), got.end(), Server::kRetireByte), 1);
    c.close_now();
    ASSERT_TRUE(srv.stop(true));
  }
  close(p[0]);
  close(p[1]);
}

// The retire notice is not lost when the supervisor's pipe is full at the moment it is due: it
// is written once the supervisor reads again.
TEST(Server, RetireNoticeSurvivesAFullPipe) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
  const char fill[4096] = {};  // zero bytes: neither a beat nor a retire notice
  static_assert(Server::kRetireByte != 0 && Server::kBeatByte != 0);
  while (write(p[1], fill, sizeof fill) > 0) {
  }
  while (write(p[1], fill, 1) > 0) {
  }
  ASSERT_EQ(errno, EAGAIN);
  ServerConfig cfg = test_config();
  cfg.supervisor_fd = p[1];
  cfg.heartbeat_interval_ms = 20;
  cfg.max_requests = 1;
  TestApp app;
  {
    Running srv(cfg, app);
    Client c(srv.port());
    // The second response proves the loop finished the step that served the first one, and so
    // tried the notice while the pipe was still full.
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(c.send(get("/hello")));
      ASSERT_TRUE(c.read_response().ok);
    }
    std::string got;
    char buf[4096];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof buf)) > 0) {
      for (ssize_t i = 0; i < n; ++i)
        if (buf[i] != 0) got.push_back(buf[i]);  // what the server wrote before it was full
    }
    int64_t deadline = mono_ms() + 5000;
    while (got.find(Server::kRetireByte) == std::string::npos && mono_ms() < deadline) {
      pollfd pfd{p[0], POLLIN, 0};
      poll(&pfd, 1, 100);
      while ((n = read(p[0], buf, sizeof buf)) > 0) got.append(buf, size_t(n));
    }
    EXPECT_EQ(std::count(got.begin(), got.end(), Server::kRetireByte), 1) << got;
    c.close_now();
    ASSERT_TRUE(srv.stop(true));
  }
  close(p[0]);
  close(p[1]);
}

TEST(Server, GracefulStopLetsPausedResponseComplete) {
  ServerConfig cfg = test_config();
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  Client idle(srv.port());
  ASSERT_TRUE(idle.send(get("/hello")));
  ASSERT_TRUE(idle.read_response().ok);
  ASSERT_TRUE(c.send(get("/stream?n=1048576&c=8192")));
  ASSERT_TRUE(app.wait_paused(1, 5000));
  srv.server().stop(true);
  ASSERT_TRUE(wait_stopping(srv));
  // The idle one is answered once more, with a close.
  ASSERT_TRUE(idle.send(get("/hello")));
  Response last = idle.read_response();
  ASSERT_TRUE(last.ok) << last;
  EXPECT_EQ(last.header("Connection"), "close");
  EXPECT_TRUE(idle.wait_closed(2000));
  Response r = c.read_response(10000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body.size(), 1048576u);
  EXPECT_TRUE(matches_pattern(r.body, 0));
  EXPECT_TRUE(c.wait_closed(3000));  // and then the server closes it
  c.close_now();
  EXPECT_TRUE(srv.wait_exit(5000));
  EXPECT_EQ(app.aborts.load(), 0);
  EXPECT_EQ(app.finished_streams.load(), 1);
  EXPECT_EQ(srv.stats().connections_open, 0u);
}

TEST(Server, GracefulStopRefusesNewRequestsOnPipelinedConnection) {
  ServerConfig cfg = test_config();
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  ASSERT_TRUE(c.send(get("/stream?n=524288")));
  ASSERT_TRUE(app.wait_paused(1, 5000));
  srv.server().stop(true);
  Response r = c.read_response(10000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body.size(), 524288u);
  // A request sent after the stop is not served: the connection closes.
  c.send(get("/hello"));
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_TRUE(c.pending().empty());
  c.close_now();
  EXPECT_TRUE(srv.wait_exit(5000));
}

TEST(Server, ImmediateStopClosesAtOnceAndAbortsPausedApp) {
  ServerConfig cfg = test_config();
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  Client idle(srv.port());
  ASSERT_TRUE(idle.send(get("/hello")));
  ASSERT_TRUE(idle.read_response().ok);
  ASSERT_TRUE(c.send(get("/stream?n=4000000")));
  ASSERT_TRUE(app.wait_paused(1, 5000));
  int64_t t0 = mono_ms();
  ASSERT_TRUE(srv.stop(false, 2000));
  EXPECT_LT(mono_ms() - t0, 1000);
  EXPECT_EQ(app.aborts.load(), 1);
  EXPECT_EQ(app.finished_streams.load(), 0);
  EXPECT_TRUE(idle.wait_closed(1000));
  EXPECT_TRUE(c.wait_closed(3000));
  EXPECT_EQ(srv.stats().connections_open, 0u);
}

TEST(Server, StopBeforeAnyConnection) {
  TestApp app;
  Running srv(test_config(), app);
  ASSERT_TRUE(srv.stop(true, 2000));
  EXPECT_EQ(srv.rc(), 0);
  ServerStats s = srv.stats();
  EXPECT_EQ(s.connections_total, 0u);
  EXPECT_EQ(s.buffers_allocated, 0u);
}

// ---- pool mode -------------------------------------------------------------------------------------

ServerConfig pool_config() {
  ServerConfig c = test_config();
  c.threads = 2;
  return c;
}

TEST(ServerPool, TwoRequestsRunConcurrently) {
  TestApp app;
  Running srv(pool_config(), app);
  Client a(srv.port()), b(srv.port());
  ASSERT_TRUE(a.send(get("/rendezvous")));
  ASSERT_TRUE(b.send(get("/rendezvous")));
  Response ra = a.read_response(8000), rb = b.read_response(8000);
  ASSERT_TRUE(ra.ok && rb.ok) << ra << rb;
  EXPECT_EQ(ra.body, "together");
  EXPECT_EQ(rb.body, "together");
}

TEST(ServerPool, ConcurrentClientsKeepAliveAndPipelining) {
  TestApp app;
  Running srv(pool_config(), app);
  constexpr int kClients = 4, kRequests = 50;
  std::atomic<int> good{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kClients; ++t) {
    ts.emplace_back([&, t] {
      Client c(srv.port());
      if (!c.connected()) return;
      for (int i = 0; i < kRequests; i += 2) {
        std::string body = "c" + std::to_string(t) + "r" + std::to_string(i);
        // Two at a time: a body request and a chunked one, pipelined.
        std::string req = post("/echo?i=" + std::to_string(i), body) +
                          "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        if (!c.send(req)) return;
        Response r1 = c.read_response(), r2 = c.read_response();
        if (r1.ok && r1.body == "POST /echo?i=" + std::to_string(i) + "\n" + body) good.fetch_add(1);
        if (r2.ok && r2.body == "POST /echo\nok") good.fetch_add(1);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(good.load(), kClients * kRequests);
  ASSERT_TRUE(srv.stop(true));
  ServerStats s = srv.stats();
  EXPECT_EQ(s.connections_open, 0u);
  EXPECT_EQ(s.connections_total, uint64_t(kClients));
  EXPECT_LE(s.connections_allocated, uint64_t(kClients));
  EXPECT_EQ(s.requests_total, uint64_t(kClients * kRequests));
}

TEST(ServerPool, BlockingWritesToSlowReader) {
  ServerConfig cfg = pool_config();
  cfg.output_high_watermark = 4096;
  TestApp app;
  Running srv(cfg, app, kSmallSndbuf);
  Client c(srv.port(), kSmallRcvbuf);
  ASSERT_TRUE(c.send(get("/stream?n=1048576&c=20000") + get("/stream?n=300000&c=4000&cl=1")));
  Response r = c.read_response(10000);
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body.size(), 1048576u);
  EXPECT_TRUE(matches_pattern(r.body, 0));
  Response r2 = c.read_response(10000);
  ASSERT_TRUE(r2.ok) << r2;
  EXPECT_EQ(r2.body.size(), 300000u);
  EXPECT_TRUE(matches_pattern(r2.body, 0));
  EXPECT_EQ(app.pauses.load(), 0);  // pool threads block instead of pausing
}

TEST(ServerPool, BodiesAnd100Continue) {
  TestApp app;
  Running srv(pool_config(), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"));
  Response cont = c.read_response();
  ASSERT_TRUE(cont.ok) << cont;
  EXPECT_EQ(cont.status, 100);
  ASSERT_TRUE(c.send("abcd"));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "POST /echo\nabcd");
}

TEST(ServerPool, GracefulStopWithIdleAndErrors) {
  TestApp app;
  Running srv(pool_config(), app);
  Client idle(srv.port());
  ASSERT_TRUE(idle.send(get("/hello")));
  ASSERT_TRUE(idle.read_response().ok);
  {
    Client bad(srv.port());
    ASSERT_TRUE(bad.send(get("/nofinish")));
    Response r = bad.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.status, 500);
    EXPECT_TRUE(bad.wait_closed(2000));
  }  // closed here, so the server's linger ends now rather than after 2 s
  srv.server().stop(true);
  ASSERT_TRUE(wait_stopping(srv));
  ASSERT_TRUE(idle.send(get("/hello")));  // served by a pool thread, with a close
  Response last = idle.read_response();
  ASSERT_TRUE(last.ok) << last;
  EXPECT_EQ(last.header("Connection"), "close");
  EXPECT_TRUE(idle.wait_closed(2000));
  ASSERT_TRUE(srv.wait_exit(3000));
  EXPECT_EQ(srv.stats().connections_open, 0u);
}

// run() that fails to start must still release the pool threads blocked in pool_take(), or the
// embedder (src/bridge/module.cpp joins them after run() returns) hangs forever.
TEST(ServerPool, FailedStartReleasesPoolThreads) {
  TestApp app;
  ServerConfig cfg = pool_config();
  cfg.listeners.push_back({-1, false});  // not a socket: run() returns EBADF
  auto* server = new Server(std::move(cfg), &app, nullptr);
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread worker([server, done] {
    while (http1::Connection* c = server->pool_take()) c->serve_lent();
    done->store(true);
  });
  int rc = server->run(nullptr);
  EXPECT_NE(rc, 0);
  int64_t t0 = mono_ms();
  while (!done->load() && mono_ms() - t0 < 1000) poll(nullptr, 0, 5);
  if (done->load()) {
    worker.join();
    delete server;
  } else {
    ADD_FAILURE() << "pool_take() still blocked after run() returned " << rc;
    worker.detach();  // leaks the server on purpose: the thread still uses it
  }
}

// ---- steady state: counters balance and nothing is allocated per request ---------------------------

TEST(Server, SteadyStateAllocatesNothingPerRequest) {
  TestApp app;
  Running srv(test_config(), app);
  Client c(srv.port());
  auto round = [&](int i) {
    switch (i % 4) {
      case 0: return c.send(get("/hello"));
      case 1: return c.send(post("/echo", "steady-state body"));
      case 2: return c.send("POST /sum HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n");
      default: return c.send(get("/hello") + get("/hello"));  // pipelined pair
    }
  };
  auto responses = [](int i) { return i % 4 == 3 ? 2 : 1; };
  for (int i = 0; i < 200; ++i) {  // warm-up
    ASSERT_TRUE(round(i));
    for (int k = 0; k < responses(i); ++k) ASSERT_TRUE(c.read_response().ok);
  }
  ASSERT_TRUE(c.send(get("/stats")));
  Response before = c.read_response();
  ASSERT_TRUE(before.ok);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(round(i));
    for (int k = 0; k < responses(i); ++k) {
      Response r = c.read_response();
      ASSERT_TRUE(r.ok && r.status == 200) << i << ": " << r;
    }
  }
  ASSERT_TRUE(c.send(get("/stats")));
  Response after = c.read_response();
  ASSERT_TRUE(after.ok);
  EXPECT_EQ(stat_field(after.body, "buffers"), stat_field(before.body, "buffers"))
      << before.body << " -> " << after.body;
  EXPECT_EQ(stat_field(after.body, "allocs"), stat_field(before.body, "allocs"))
      << "operator new on the loop thread during 1000 keep-alive requests: " << before.body
      << " -> " << after.body;
  EXPECT_EQ(stat_field(after.body, "conns"), 1u);
  EXPECT_EQ(stat_field(after.body, "requests") - stat_field(before.body, "requests"), 1251u);
  c.close_now();
  ASSERT_TRUE(srv.stop(true));
  EXPECT_EQ(srv.stats().connections_open, 0u);
}

TEST(Server, ConnectionsAreRecycledNotReallocated) {
  TestApp app;
  Running srv(test_config(), app);
  for (int i = 0; i < 200; ++i) {
    Client c(srv.port());
    ASSERT_TRUE(c.send(get("/hello", "Connection: close\r\n")));
    ASSERT_TRUE(c.read_response().ok);
    ASSERT_TRUE(c.wait_closed(2000));
  }
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/stats")));
  Response s = c.read_response();
  ASSERT_TRUE(s.ok);
  // Closed one at a time, so a handful of Connection objects (lingering ones included) suffice.
  EXPECT_LE(stat_field(s.body, "conns"), 4u) << s.body;
  EXPECT_LE(stat_field(s.body, "buffers"), 8u) << s.body;
  c.close_now();
  ASSERT_TRUE(srv.stop(true));
  ServerStats st = srv.stats();
  EXPECT_EQ(st.connections_open, 0u);
  EXPECT_EQ(st.connections_total, 201u);
}

TEST(ServerPool, SteadyStateAllocatesNothingPerRequest) {
  TestApp app;
  Running srv(pool_config(), app);
  Client c(srv.port());
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(c.send(get("/hello")));
    ASSERT_TRUE(c.read_response().ok);
  }
  uint64_t before = g_counted_allocs.load();
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(c.send(get("/hello")));
    ASSERT_TRUE(c.read_response().ok);
  }
  EXPECT_EQ(g_counted_allocs.load(), before);
}

// ---- access log ------------------------------------------------------------------------------------

TEST(Server, AccessLogLine) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ServerConfig cfg = test_config();
  cfg.access_log_fd = p[1];
  TestApp app;
  {
    Running srv(cfg, app);
    Client c(srv.port());
    ASSERT_TRUE(c.send(get("/hello?x=1", "User-Agent: tester/1.0\r\nReferer: http://r/\r\n")));
    ASSERT_TRUE(c.read_response().ok);
    c.close_now();
    ASSERT_TRUE(srv.stop(true));
  }
  close(p[1]);
  std::string log;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) log.append(buf, size_t(n));
  close(p[0]);
  EXPECT_EQ(log.rfind("127.0.0.1 - - [", 0), 0u) << log;
  EXPECT_NE(log.find("] \"GET /hello?x=1 HTTP/1.1\" 200 5 \"http://r/\" \"tester/1.0\"\n"), std::string::npos)
      << log;
}

namespace {
std::string read_all(int fd) {
  std::string log;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) log.append(buf, size_t(n));
  return log;
}
}  // namespace

// A compiled custom format: response headers are captured at start_response, the duration is
// measured, and with the log on (every per-request path of it) nothing is allocated per request.
TEST(Server, AccessLogCustomFormatAllocatesNothingPerRequest) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ServerConfig cfg = test_config();
  cfg.access_log_fd = p[1];
  ASSERT_EQ(cfg.access_format.compile("%(m)s %(U)s %(q)s %(s)s %(B)s %({content-type}o)s "
                                      "%({content-length}o)s %({x-none}o)s %({x-id}i)s D=%(D)s"),
            "");
  TestApp app;
  std::string log;
  {
    Running srv(cfg, app);
    Client c(srv.port());
    // The pipe holds 64 KiB and nobody reads it until the end: keep the lines under that.
    for (int i = 0; i < 100; ++i) {  // warm-up: capture buffers, pools, the Buffer's capacity
      ASSERT_TRUE(c.send(get("/hello?i=1", "X-Id: warm\r\n")));
      Response r = c.read_response();
      ASSERT_TRUE(r.ok) << r;
    }
    ASSERT_TRUE(c.send(get("/stats")));
    Response before = c.read_response();
    ASSERT_TRUE(before.ok);
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(c.send(get("/hello?i=2", "X-Id: steady\r\n")));
      ASSERT_TRUE(c.read_response().ok);
    }
    ASSERT_TRUE(c.send(get("/stats")));
    Response after = c.read_response();
    ASSERT_TRUE(after.ok);
    EXPECT_EQ(stat_field(after.body, "allocs"), stat_field(before.body, "allocs")) << after.body;
    c.close_now();  // an idle connection would keep a graceful stop waiting for its next request
    ASSERT_TRUE(srv.stop(true));
  }
  close(p[1]);
  log = read_all(p[0]);
  close(p[0]);
  size_t at = log.find("GET /hello i=2 200 5 text/plain 5 - steady D=");
  ASSERT_NE(at, std::string::npos) << log.substr(0, 400);
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 402);
  size_t nl = log.find('\n', at);
  std::string d = log.substr(log.find("D=", at) + 2, nl - log.find("D=", at) - 2);
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d.find_first_not_of("0123456789"), std::string::npos) << d;
  EXPECT_LT(std::stoll(d), 10'000'000) << d;  // microseconds, not a garbage start time
}

// Two servers (as two worker processes would) share one access log, a pipe or an O_APPEND file,
// while a slow reader drains the pipe: pipelined requests make batches of lines far over
// PIPE_BUF, and no line may be split by the other server's.
class SharedAccessLog : public ::testing::TestWithParam<bool> {};

TEST_P(SharedAccessLog, WorkersNeverSplitEachOthersLines) {
  const bool use_pipe = GetParam();
  int wfd, rfd;
  char path[] = "/tmp/fulmen-access-XXXXXX";
  if (use_pipe) {
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    rfd = p[0];
    wfd = p[1];
  } else {
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    wfd = open(path, O_WRONLY | O_APPEND);
    rfd = open(path, O_RDONLY);
    unlink(path);
    ASSERT_GE(wfd, 0);
    ASSERT_GE(rfd, 0);
  }
  std::string log;
  std::thread reader;
  if (use_pipe) {
    reader = std::thread([&] {
      char buf[512];  // small reads: the writers fill the pipe and have to wait
      ssize_t n;
      while ((n = read(rfd, buf, sizeof buf)) > 0) log.append(buf, size_t(n));
    });
  }
  constexpr int kBatches = 30, kPipelined = 8;
  const std::string pad(3000, 'x');
  {
    ServerConfig cfg = test_config();
    cfg.access_log_fd = wfd;
    ASSERT_EQ(cfg.access_format.compile("%(q)s %({x-pad}i)s end"), "");
    TestApp app_a, app_b;
    Running a(cfg, app_a), b(cfg, app_b);
    auto client = [&](Running& srv, char id) {
      Client c(srv.port());
      for (int i = 0; i < kBatches; ++i) {
        std::string batch;
        for (int k = 0; k < kPipelined; ++k)
          batch += get("/hello?" + std::string(1, id) + std::to_string(i * kPipelined + k), "X-Pad: " + pad + "\r\n");
        if (!c.send(batch)) return;
        for (int k = 0; k < kPipelined; ++k)
          if (!c.read_response().ok) return;
      }
    };
    std::thread ta(client, std::ref(a), 'a'), tb(client, std::ref(b), 'b');
    ta.join();
    tb.join();
    ASSERT_TRUE(a.stop(true));
    ASSERT_TRUE(b.stop(true));
  }
  close(wfd);
  if (use_pipe) reader.join();
  else log = read_all(rfd);
  close(rfd);
  std::set<std::string> seen;
  size_t start = 0, bad = 0;
  while (start < log.size()) {
    size_t nl = log.find('\n', start);
    ASSERT_NE(nl, std::string::npos) << "unterminated line at " << start;
    std::string line = log.substr(start, nl - start);
    size_t sp = line.find(' ');
    if (sp == std::string::npos || line.substr(sp) != " " + pad + " end") ++bad;
    else seen.insert(line.substr(0, sp));
    start = nl + 1;
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(seen.size(), size_t(2 * kBatches * kPipelined));
}

INSTANTIATE_TEST_SUITE_P(PipeAndFile, SharedAccessLog, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Pipe" : "AppendFile"; });

// stats() is called from other threads while the server runs (the Python bridge's Server.stats()
// from any Python thread), and in pool mode the app threads count requests concurrently. No
// request may be lost from the count, and a reader sees counts that only grow.
TEST(ServerPool, StatsAreExactUnderConcurrentRequestsAndReaders) {
  ServerConfig cfg = test_config();
  cfg.threads = 4;
  TestApp app;
  Running srv(cfg, app);
  constexpr int kClients = 4, kRequests = 300;
  std::atomic<bool> done{false};
  std::atomic<int> regressions{0};
  std::thread reader([&] {
    uint64_t last_requests = 0, last_total = 0;
    while (!done.load()) {
      ServerStats s = srv.stats();
      if (s.requests_total < last_requests || s.connections_total < last_total) regressions.fetch_add(1);
      last_requests = s.requests_total;
      last_total = s.connections_total;
    }
  });
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int k = 0; k < kClients; ++k) {
    clients.emplace_back([&, k] {
      Client c(srv.port());
      for (int i = 0; i < kRequests; ++i) {
        if (!c.send(get("/echo?c=" + std::to_string(k) + "&i=" + std::to_string(i)))) return;
        Response r = c.read_response();
        if (r.ok && r.status == 200) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  done.store(true);
  reader.join();
  EXPECT_EQ(ok.load(), kClients * kRequests);
  EXPECT_EQ(regressions.load(), 0);
  ServerStats live = srv.stats();
  EXPECT_EQ(live.requests_total, uint64_t(kClients * kRequests));
  EXPECT_EQ(live.connections_total, uint64_t(kClients));
  ASSERT_TRUE(srv.stop(true));
  ServerStats st = srv.stats();
  EXPECT_EQ(st.requests_total, uint64_t(kClients * kRequests));
  EXPECT_EQ(st.connections_open, 0u);
}

// ---- behind a proxy: PROXY protocol, proxy headers, --limit-concurrency ---------------------------

TEST(ServerProxy, ProxyProtocolHeaderInPiecesSetsTheClient) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.proxy_protocol = true;
  Running srv(std::move(cfg), app);
  Client c(srv.port());
  std::string header = "PROXY TCP4 203.0.113.9 10.0.0.1 4242 443\r\n";
  for (char ch : header) ASSERT_TRUE(c.send(std::string_view(&ch, 1)));  // a byte per segment
  for (int i = 0; i < 2; ++i) {  // every request on the connection
    ASSERT_TRUE(c.send(get("/peer")));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.body, "203.0.113.9:4242");
  }
  // No header: closed without an answer.
  Client bare(srv.port());
  ASSERT_TRUE(bare.send(get("/peer")));
  EXPECT_TRUE(bare.wait_closed(2000));
  EXPECT_TRUE(bare.pending().empty()) << bare.pending();
}

TEST(ServerProxy, ProxyHeadersOnlyFromTrustedPeers) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.proxy_headers = true;
  http1::IpNet net;
  ASSERT_TRUE(http1::parse_ip_net("127.0.0.0/8", &net));
  cfg.trusted.nets.push_back(net);
  Running srv(std::move(cfg), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/peer", "X-Forwarded-For: 198.51.100.1, 127.0.0.9\r\nX-Forwarded-Proto: https\r\n")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_NE(r.body.find(" fwd=198.51.100.1:0 https :-1"), std::string::npos) << r.body;
  ASSERT_TRUE(c.send(get("/peer")));  // the next request without headers: nothing forwarded
  r = c.read_response();
  EXPECT_EQ(r.body.find("fwd="), std::string::npos) << r.body;

  TestApp app2;
  ServerConfig untrusting = test_config();
  untrusting.proxy_headers = true;
  ASSERT_TRUE(http1::parse_ip_net("10.0.0.0/8", &net));
  untrusting.trusted.nets.push_back(net);
  Running srv2(std::move(untrusting), app2);
  Client c2(srv2.port());
  ASSERT_TRUE(c2.send(get("/peer", "X-Forwarded-For: 198.51.100.1\r\n")));
  r = c2.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body.find("fwd="), std::string::npos) << r.body;
  EXPECT_EQ(r.body.rfind("127.0.0.1:", 0), 0u) << r.body;
}

// A TCP pass-through balancer forwards the client's bytes: with --proxy-protocol, trust must be
// decided on the PROXY header's source (the client), not on the balancer's socket address.
TEST(ServerProxy, ProxyProtocolSourceDecidesTrust) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.proxy_headers = true;
  cfg.proxy_protocol = true;
  http1::IpNet net;
  ASSERT_TRUE(http1::parse_ip_net("127.0.0.1", &net));  // the balancer (our socket peer)
  cfg.trusted.nets.push_back(net);
  ASSERT_TRUE(http1::parse_ip_net("10.0.0.0/8", &net));  // an HTTP proxy behind the balancer
  cfg.trusted.nets.push_back(net);
  Running srv(std::move(cfg), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("PROXY TCP4 203.0.113.9 10.0.0.1 4242 443\r\n"));
  ASSERT_TRUE(c.send(get("/peer", "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "203.0.113.9:4242");  // the client's own headers are not believed
  Client via_proxy(srv.port());
  ASSERT_TRUE(via_proxy.send("PROXY TCP4 10.0.0.7 10.0.0.1 4242 443\r\n"));
  ASSERT_TRUE(via_proxy.send(get("/peer", "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n")));
  r = via_proxy.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.body, "10.0.0.7:4242 fwd=198.51.100.1:0 https :-1");
}

TEST(ServerProxy, MalformedTrustedProxyHeadersAre400) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.proxy_headers = true;
  http1::IpNet net;
  ASSERT_TRUE(http1::parse_ip_net("127.0.0.1", &net));
  cfg.trusted.nets.push_back(net);
  Running srv(std::move(cfg), app);
  // What the client wrote left of the proxy's hop is never parsed.
  Client c(srv.port());
  ASSERT_TRUE(c.send(get("/peer", "X-Forwarded-For: foo, 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
                                  "X-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;host=evil.com\r\n")));
  Response r = c.read_response();
  ASSERT_TRUE(r.ok) << r;
  // Default --forwarded-headers: X-Forwarded-Host and Forwarded are not believed.
  EXPECT_NE(r.body.find(" fwd=203.0.113.9:0 https :-1"), std::string::npos) << r.body;
  // The proxy's own hop malformed: refused, never served as from the proxy's address.
  Client bad(srv.port());
  ASSERT_TRUE(bad.send(get("/peer", "X-Forwarded-For: 203.0.113.9, foo\r\n")));
  r = bad.read_response();
  ASSERT_TRUE(r.ok) << r;
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.header("connection"), "close");
  EXPECT_TRUE(bad.wait_closed(2000));
}

TEST(ServerProxy, LimitConcurrencyAnswers503BeyondN) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.limit_concurrency = 1;
  Running srv(std::move(cfg), app);
  Client first(srv.port());
  ASSERT_TRUE(first.send(get("/hello")));
  ASSERT_TRUE(is_hello(first.read_response()));
  {
    Client second(srv.port());
    ASSERT_TRUE(second.send(get("/hello")));
    Response r = second.read_response();
    ASSERT_TRUE(r.ok) << r;
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(r.header("connection"), "close");
    EXPECT_TRUE(second.wait_closed(2000));
  }
  // As in Uvicorn, the limit counts every open connection, whichever sends the request: once
  // `first` is gone, a new connection is served again (when the server has seen the close).
  first.shutdown_write();
  EXPECT_TRUE(first.wait_closed(2000));
  bool served = false;
  for (int attempt = 0; attempt < 200 && !served; ++attempt) {
    Client again(srv.port());
    ASSERT_TRUE(again.send(get("/hello")));
    Response r = again.read_response();
    ASSERT_TRUE(r.ok) << r;
    served = r.status == 200;
  }
  EXPECT_TRUE(served);
}

TEST(ServerProxy, SteadyStateWithProxyFeaturesAllocatesNothing) {
  TestApp app;
  ServerConfig cfg = test_config();
  cfg.proxy_headers = true;
  cfg.proxy_protocol = true;
  cfg.limit_concurrency = 100;
  cfg.forwarded_headers = http1::kForwardedRfc7239;
  http1::IpNet net;
  ASSERT_TRUE(http1::parse_ip_net("2001:db8::1", &net));  // trust is the PROXY source's
  cfg.trusted.nets.push_back(net);
  Running srv(std::move(cfg), app);
  Client c(srv.port());
  ASSERT_TRUE(c.send("PROXY TCP6 2001:db8::1 ::1 1000 80\r\n"));
  std::string req = get("/peer", "Forwarded: for=\"[2001:db8::7]:99\";proto=https;host=\"h.example:8443\"\r\n"
                                 "X-Forwarded-For: 1.1.1.1, 2.2.2.2\r\n");
  for (int i = 0; i < 100; ++i) {  // warm-up
    ASSERT_TRUE(c.send(req));
    ASSERT_TRUE(c.read_response().ok);
  }
  ASSERT_TRUE(c.send(get("/stats")));
  Response before = c.read_response();
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(c.send(req));
    Response r = c.read_response();
    ASSERT_TRUE(r.ok) << r;
    ASSERT_EQ(r.body, "2001:db8::1:1000 fwd=2001:db8::7:99 https h.example:8443");
  }
  ASSERT_TRUE(c.send(get("/stats")));
  Response after = c.read_response();
  EXPECT_EQ(stat_field(after.body, "allocs"), stat_field(before.body, "allocs")) << before.body << " -> " << after.body;
}

}  // namespace
}  // namespace fulmen
