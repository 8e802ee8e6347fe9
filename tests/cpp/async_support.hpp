// The test "event loop" shared by the engine tests for asynchronous apps (test_server_async.cpp,
// test_server_ws.cpp): one thread plays asyncio. It owns the Server: start(), then poll() on
// epoll_fd() with a timeout from next_timeout_ms(), step(0) when the fd is readable, the timeout
// has passed or on_deferred() asked for a step (asyncio's call_soon), and between steps it runs a
// FIFO of "app tasks" (std::function, asyncio's ready queue) and call_later() timers. Everything,
// the engine and the app, runs on that one thread; the test thread only talks to it through
// post()/call() (asyncio's call_soon_threadsafe), reads published snapshots, and drives
// raw-socket clients (server_support.hpp).
//
// The loop thread marks itself for alloc_counter, so a binary that links alloc_counter.cpp counts
// what the engine (and the app) allocate there. Header-only, inline in fulmen::test.
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"
#include "core/base/log.hpp"
#include "core/server.hpp"
#include "server_support.hpp"

namespace fulmen::test {

using Task = std::function<void()>;

// One thread that owns the Server and runs app tasks between steps, as asyncio would with the
// server's epoll fd registered as a reader.
class EventLoop final : public net::LoopHooks {
 public:
  // An app with a `loop` member (EventLoop*) gets it set before the loop thread starts, so its
  // callbacks can schedule tasks without racing the constructor.
  template <class App>
  EventLoop(ServerConfig cfg, App& app, int sndbuf = 0, int rcvbuf = 0) {
    lst_ = listen_loopback(sndbuf, rcvbuf);
    cfg.listeners.push_back({lst_.fd, false});
    server_ = std::make_unique<Server>(std::move(cfg), &app, &logger_);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if constexpr (requires { app.loop = this; }) app.loop = this;
    ready_.reserve(256);
    batch_.reserve(256);
    posted_.reserve(64);
    thread_ = std::thread([this] { run(); });
  }
  ~EventLoop() {
    if (!wait_exit(0)) {
      server_->stop(false);
      wait_exit(5000);
    }
    thread_.join();
    ready_.clear();
    timed_.clear();
    posted_.clear();
    server_.reset();
    if (lst_.fd >= 0) close(lst_.fd);
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  int port() const { return lst_.port; }
  Server& server() { return *server_; }

  // ---- loop thread only ----
  void soon(Task t) { ready_.push_back(std::move(t)); }  // asyncio call_soon
  void later(int ms, Task t) { timed_.push_back({mono_ms() + ms, std::move(t)}); }  // call_later
  uint64_t deferred_calls() const { return deferred_calls_.load(); }
  uint64_t steps() const { return steps_; }

  // ---- any thread ----
  void post(Task t) {  // asyncio call_soon_threadsafe
    {
      std::lock_guard<std::mutex> g(post_mu_);
      posted_.push_back(std::move(t));
    }
    uint64_t one = 1;
    ssize_t r = ::write(wake_fd_, &one, sizeof one);
    (void)r;
  }
  // Runs f as a task on the loop thread and waits for it. False if it did not run in time (it
  // then never runs).
  bool call(std::function<void()> f, int timeout_ms = 5000) {
    struct State {
      std::mutex mu;
      std::condition_variable cv;
      int phase = 0;  // 0 queued, 1 running, 2 done, 3 cancelled
    };
    auto st = std::make_shared<State>();
    post([st, fn = std::move(f)] {
      {
        std::lock_guard<std::mutex> g(st->mu);
        if (st->phase == 3) return;
        st->phase = 1;
      }
      fn();
      std::lock_guard<std::mutex> g(st->mu);
      st->phase = 2;
      st->cv.notify_all();
    });
    std::unique_lock<std::mutex> g(st->mu);
    if (st->cv.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] { return st->phase == 2; }))
      return true;
    if (st->phase == 0) {
      st->phase = 3;
      return false;
    }
    st->cv.wait(g, [&] { return st->phase == 2; });  // running right now: let it end
    return true;
  }
  // Waits until pred(stats published after the latest loop iteration) holds; the loop publishes
  // after every iteration, so conditions on the app's atomics are re-checked then too.
  template <class P>
  bool wait(P pred, int timeout_ms = 5000) {
    std::unique_lock<std::mutex> g(mu_);
    cv_.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] { return pred(snap_) || exited_; });
    return pred(snap_);
  }
  bool stop(bool graceful, int timeout_ms = 5000) {
    server_->stop(graceful);
    return wait_exit(timeout_ms);
  }
  bool wait_exit(int timeout_ms) {
    std::unique_lock<std::mutex> g(mu_);
    return cv_.wait_for(g, std::chrono::milliseconds(timeout_ms), [&] { return exited_; });
  }
  bool exited() {
    std::lock_guard<std::mutex> g(mu_);
    return exited_;
  }
  int rc() {
    std::lock_guard<std::mutex> g(mu_);
    return rc_;
  }
  ServerStats snapshot() {
    std::lock_guard<std::mutex> g(mu_);
    return snap_;
  }

  // ---- LoopHooks ----
  void on_deferred() noexcept override {
    deferred_calls_.fetch_add(1);
    step_soon_ = true;  // asyncio: loop.call_soon(step)
  }

 private:
  struct Timed {
    int64_t due;
    Task task;
  };

  void run() {
    t_count_allocs = true;
    int rc = server_->start(this);
    if (rc == 0) {
      int t = server_->next_timeout_ms();
      int64_t deadline = t < 0 ? -1 : mono_ms() + t;
      for (;;) {
        // The tasks that are ready now (those they post run in the next round, as in asyncio).
        {
          std::lock_guard<std::mutex> g(post_mu_);
          for (auto& p : posted_) ready_.push_back(std::move(p));
          posted_.clear();
        }
        int64_t now = mono_ms();
        for (size_t i = 0; i < timed_.size();) {
          if (timed_[i].due <= now) {
            ready_.push_back(std::move(timed_[i].task));
            timed_.erase(timed_.begin() + ptrdiff_t(i));
          } else {
            ++i;
          }
        }
        batch_.swap(ready_);
        for (auto& task : batch_) task();
        batch_.clear();

        // Wait for the epoll fd, the step deadline, a timer or a posted task.
        int timeout = -1;
        if (!ready_.empty() || step_soon_) {
          timeout = 0;
        } else {
          now = mono_ms();
          int64_t next = deadline;
          for (auto& td : timed_) next = next < 0 ? td.due : std::min(next, td.due);
          if (next >= 0) timeout = int(std::clamp<int64_t>(next - now, 0, INT_MAX));
        }
        pollfd fds[2] = {{server_->epoll_fd(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        int n = ::poll(fds, 2, timeout);
        if (n > 0 && (fds[1].revents & POLLIN)) {
          uint64_t v;
          ssize_t r = ::read(wake_fd_, &v, sizeof v);
          (void)r;
        }
        bool due = deadline >= 0 && mono_ms() >= deadline;
        if ((n > 0 && (fds[0].revents & POLLIN)) || step_soon_ || due) {
          step_soon_ = false;
          ++steps_;
          bool more = server_->step(0);
          int t2 = server_->next_timeout_ms();
          deadline = t2 < 0 ? -1 : mono_ms() + t2;
          if (!more) break;
        }
        publish();
      }
    }
    std::lock_guard<std::mutex> g(mu_);
    snap_ = server_->stats();
    rc_ = rc;
    exited_ = true;
    cv_.notify_all();
  }

  void publish() {
    {
      std::lock_guard<std::mutex> g(mu_);
      snap_ = server_->stats();
    }
    cv_.notify_all();
  }

  class NullLogger : public base::Logger {
   public:
    void log(base::LogLevel, std::string_view) noexcept override {}
  };
  NullLogger logger_;
  Listener lst_;
  std::unique_ptr<Server> server_;
  int wake_fd_ = -1;
  std::thread thread_;
  // Loop thread only.
  std::vector<Task> ready_, batch_;
  std::vector<Timed> timed_;
  bool step_soon_ = false;
  uint64_t steps_ = 0;
  std::atomic<uint64_t> deferred_calls_{0};
  // Shared.
  std::mutex post_mu_;
  std::vector<Task> posted_;
  std::mutex mu_;
  std::condition_variable cv_;
  ServerStats snap_;
  bool exited_ = false;
  int rc_ = -1;
};

// Reads job fields on the loop thread.
template <class F>
auto on_loop(EventLoop& loop, F f) -> decltype(f()) {
  decltype(f()) out{};
  bool ran = loop.call([&] { out = f(); });
  EXPECT_TRUE(ran) << "the loop did not run a task in time";
  return out;
}

}  // namespace fulmen::test
