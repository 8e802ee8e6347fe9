// fulmen._core: the Server type that runs the C++ engine for one worker process, and the GIL
// discipline around it. Inline mode (threads == 1) holds the GIL while it runs Python and gives it
// up only while epoll_wait or a blocking read waits; pool mode runs the loop without the GIL and
// the app on N Python threads.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "bridge/asgi.hpp"
#include "bridge/py_ref.hpp"
#include "bridge/wsgi.hpp"
#include "core/http1/connection.hpp"
#include "core/server.hpp"

namespace fulmen::bridge {
namespace {

thread_local PyThreadState* t_saved = nullptr;  // the state a blocking wait gave up, per thread

// Blocking waits on whichever thread holds the GIL: give it up for the wait.
class GilBlockHooks final : public BlockHooks {
 public:
  void before_block() noexcept override { t_saved = PyEval_SaveThread(); }
  void after_block() noexcept override { restore_thread(t_saved); }
};

struct State;

// Inline mode: the loop thread is the Python thread that called run().
class InlineLoopHooks final : public net::LoopHooks {
 public:
  explicit InlineLoopHooks(State* s) : s_(s) {}
  void before_wait() noexcept override { saved_ = PyEval_SaveThread(); }
  void after_wait() noexcept override { restore_thread(saved_); }
  void on_wakeup() noexcept override;

 private:
  State* s_;
  PyThreadState* saved_ = nullptr;
};

// Pool mode: the loop runs without the GIL and takes it only to run signal handlers.
class PoolLoopHooks final : public net::LoopHooks {
 public:
  explicit PoolLoopHooks(State* s) : s_(s) {}
  void on_wakeup() noexcept override;
  PyThreadState* main_state = nullptr;

 private:
  State* s_;
};

// asyncio mode: the loop never waits inside the engine (asyncio waits on the epoll fd), the GIL
// stays held, and deferred work becomes one loop.call_soon(step).
class AsyncioHooks final : public net::LoopHooks {
 public:
  explicit AsyncioHooks(State* s) : s_(s) {}
  void on_deferred() noexcept override;

 private:
  State* s_;
};

class PyLogger final : public base::Logger {
 public:
  explicit PyLogger(State* s) : s_(s) {}
  void log(base::LogLevel, std::string_view message) noexcept override;

 private:
  State* s_;
};

struct State {
  std::unique_ptr<PyHandler> handler;
  AsgiHandler* asgi = nullptr;  // set when serving ASGI (owned by handler)
  std::unique_ptr<Server> server;
  GilBlockHooks block_hooks;
  InlineLoopHooks inline_hooks{this};
  PoolLoopHooks pool_hooks{this};
  PyLogger logger{this};
  AsyncioHooks asyncio_hooks{this};
  // asyncio mode: the loop, the bound step() callable, the pending timer, the done future.
  Ref loop, step_fn, timer_handle, done_future, call_soon, call_later;
  // {"context": <a copy of serve_asyncio's caller context>}: steps scheduled from inside an app's
  // task must not run in (and hand to the next request's task) that task's context.
  Ref ctx_kwargs;
  // How the loop learns that the engine has work (serve_asyncio(bridge=...)). kReader is
  // Fulmen's design; kPoll and kHop exist so the benchmark can measure the alternatives the
  // peers use (docs/architecture.md): polling the engine from loop callbacks (socketify), and a
  // thread that waits for I/O and hops to the loop thread (Granian).
  enum class Bridge { kReader, kPoll, kHop } bridge = Bridge::kReader;
  Ref poll_fn, hop_fn, call_soon_threadsafe;
  std::thread hop_thread;
  int hop_stop_fd = -1;
  std::atomic<bool> hop_stop{false};
  std::mutex hop_mu;
  std::condition_variable hop_cv;
  bool hop_pending = false;  // a hop was handed to the loop and has not run yet
  int64_t timer_deadline_ms = -1;  // CLOCK_MONOTONIC ms the timer_handle fires at
  bool step_scheduled = false;     // a call_soon(step) is pending
  int threads = 1;
  bool running = false;
  bool abandoned = false;  // a stuck app thread still uses the engine: never free it
  PyObject* pending_type = nullptr;  // an exception a signal handler raised during run()
  PyObject* pending_value = nullptr;
  PyObject* pending_tb = nullptr;

  // Runs Python signal handlers; an exception they raise stops the server and is re-raised
  // by run() (the CLI's handlers call stop() instead of raising).
  void check_signals() noexcept {
    if (PyErr_CheckSignals() < 0) {
      if (!pending_type) PyErr_Fetch(&pending_type, &pending_value, &pending_tb);
      else PyErr_Clear();
      server->stop(true);
    }
  }
};

void InlineLoopHooks::on_wakeup() noexcept { s_->check_signals(); }

void PoolLoopHooks::on_wakeup() noexcept {
  restore_thread(main_state);
  s_->check_signals();
  main_state = PyEval_SaveThread();
}

void AsyncioHooks::on_deferred() noexcept {
  if (s_->step_scheduled || !s_->step_fn) return;
  Ref args = Ref::steal(PyTuple_Pack(1, s_->step_fn.get()));
  Ref h = args ? Ref::steal(PyObject_Call(s_->call_soon.get(), args.get(), s_->ctx_kwargs.get())) : Ref();
  if (h) s_->step_scheduled = true;
  else s_->handler->log_exception("loop.call_soon failed");
}

void PyLogger::log(base::LogLevel, std::string_view message) noexcept {
  GilGuard gil;
  std::string m(message);
  s_->handler->log_message(m.c_str());
}

void stop_hop_thread(State* s);

struct ServerObject {
  PyObject_HEAD
  State* state;  // owned (new/delete): C++ objects with destructors cannot live in a PyObject
};

void server_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (self->state) {
    Py_XDECREF(self->state->pending_type);
    Py_XDECREF(self->state->pending_value);
    Py_XDECREF(self->state->pending_tb);
    stop_hop_thread(self->state);
    if (!self->state->abandoned) delete self->state;
  }
  Py_TYPE(o)->tp_free(o);
}

PyObject* server_new(PyTypeObject* type, PyObject*, PyObject*) {
  auto* self = reinterpret_cast<ServerObject*>(type->tp_alloc(type, 0));
  if (self) self->state = nullptr;
  return reinterpret_cast<PyObject*>(self);
}

int64_t to_ms(double seconds) { return seconds <= 0 ? 0 : int64_t(seconds * 1000.0 + 0.5); }

int server_init(PyObject* o, PyObject* args, PyObject* kw) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (self->state) {
    PyErr_SetString(PyExc_RuntimeError, "Server is already initialised");
    return -1;
  }
  static const char* kwlist[] = {"app", "listeners", "error_log", "threads", "root_path",
                                 "url_scheme", "access_log_fd", "timeout_keep_alive",
                                 "timeout_request_header", "timeout_request_body",
                                 "limit_request_line", "limit_request_fields",
                                 "limit_request_field_size", "limit_request_body",
                                 "graceful_timeout", "interface", "ws", "ws_max_size",
                                 "ws_ping_interval", "ws_ping_timeout", "ws_per_message_deflate",
                                 "limit_concurrency", "proxy_headers", "forwarded_allow_ips",
                                 "proxy_protocol", "access_log_format", "shutdown_listeners",
                                 "supervisor_fd", "heartbeat_interval", "max_requests", "multiprocess",
                                 "forwarded_headers", nullptr};
  PyObject *app, *listeners, *error_log = nullptr;
  int threads = 1, access_log_fd = -1;
  const char* root_path = "";
  const char* url_scheme = "http";
  double keep_alive = 5.0, header_timeout = 30.0, body_timeout = 60.0, graceful = 30.0;
  Py_ssize_t line = 8190, fields = 100, field_size = 8190;
  long long body_limit = 0;
  const char* interface = "wsgi";
  int ws = 1, ws_deflate = 1;
  long long ws_max_size = 16ll << 20;
  double ws_ping_interval = 20.0, ws_ping_timeout = 20.0;
  long long limit_concurrency = 0;
  int proxy_headers = 0, proxy_protocol = 0;
  PyObject* allow_ips = nullptr;  // borrowed: a sequence of "*", "unix", or IP/CIDR strings
  PyObject* fwd_headers = nullptr;  // borrowed: a sequence of header names (--forwarded-headers)
  const char* access_log_format = nullptr;
  // Set by a supervisor for its workers (src/fulmen/supervisor.py).
  int shutdown_listeners = 1, supervisor_fd = -1, multiprocess = 0;
  double heartbeat = 0.0;
  long long max_requests = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$OissidddnnnLdspLddpLpOpzpidLpO", const_cast<char**>(kwlist),
                                   &app, &listeners, &error_log, &threads, &root_path, &url_scheme,
                                   &access_log_fd, &keep_alive, &header_timeout, &body_timeout,
                                   &line, &fields, &field_size, &body_limit, &graceful, &interface,
                                   &ws, &ws_max_size, &ws_ping_interval, &ws_ping_timeout,
                                   &ws_deflate, &limit_concurrency, &proxy_headers, &allow_ips,
                                   &proxy_protocol, &access_log_format, &shutdown_listeners,
                                   &supervisor_fd, &heartbeat, &max_requests, &multiprocess, &fwd_headers))
    return -1;
  if (limit_concurrency < 0) {
    PyErr_SetString(PyExc_ValueError, "limit_concurrency must not be negative (0: no limit)");
    return -1;
  }
  if (heartbeat < 0 || max_requests < 0) {
    PyErr_SetString(PyExc_ValueError, "heartbeat_interval and max_requests must not be negative");
    return -1;
  }
  if (ws_max_size < 0 || ws_ping_interval < 0 || ws_ping_timeout < 0) {
    PyErr_SetString(PyExc_ValueError, "ws_max_size, ws_ping_interval and ws_ping_timeout must not be negative");
    return -1;
  }
  bool asgi = std::strcmp(interface, "asgi") == 0;
  if (!asgi && std::strcmp(interface, "wsgi") != 0) {
    PyErr_Format(PyExc_ValueError, "interface must be 'wsgi' or 'asgi', not '%s'", interface);
    return -1;
  }
  if (asgi) threads = 1;  // ASGI runs on the event loop's thread
  if (!PyCallable_Check(app)) {
    PyErr_SetString(PyExc_TypeError, "app must be callable");
    return -1;
  }
  if (!error_log || !PyCallable_Check(error_log)) {
    PyErr_SetString(PyExc_TypeError, "error_log must be a callable (message, exc)");
    return -1;
  }
  if (threads < 1 || threads > 1024) {
    PyErr_SetString(PyExc_ValueError, "threads must be between 1 and 1024");
    return -1;
  }
  if (line < 0 || fields < 0 || field_size < 0 || body_limit < 0) {
    PyErr_SetString(PyExc_ValueError, "limits must not be negative");
    return -1;
  }
  ServerConfig cfg;
  std::vector<ListenerInfo> infos;
  Ref seq = Ref::steal(PySequence_Fast(listeners, "listeners must be a sequence"));
  if (!seq) return -1;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq.get()); ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(seq.get(), i);  // borrowed
    int fd, port, is_unix;
    const char* name;
    if (!PyArg_ParseTuple(item, "isip;listeners items are (fd, server_name, server_port, is_unix)",
                          &fd, &name, &port, &is_unix))
      return -1;
    cfg.listeners.push_back({fd, bool(is_unix)});
    infos.push_back({name, port, bool(is_unix)});
  }
  if (cfg.listeners.empty()) {
    PyErr_SetString(PyExc_ValueError, "at least one listener is needed");
    return -1;
  }
  cfg.threads = threads;
  cfg.prefetch_body = !asgi;
  cfg.access_log_fd = access_log_fd;
  if (access_log_format) {
    std::string err = cfg.access_format.compile(access_log_format);
    if (!err.empty()) {
      PyErr_Format(PyExc_ValueError, "invalid access log format: %s", err.c_str());
      return -1;
    }
  }
  cfg.keep_alive_ms = to_ms(keep_alive);
  cfg.header_timeout_ms = to_ms(header_timeout);
  cfg.body_timeout_ms = to_ms(body_timeout);
  cfg.graceful_timeout_ms = to_ms(graceful);
  // 0 means "no limit of its own" (as in Gunicorn); the input buffer still bounds a whole head.
  cfg.limits.max_request_line = line ? size_t(line) : cfg.buffer_size;
  cfg.limits.max_fields = fields ? size_t(fields) : 32768;
  cfg.limits.max_field_size = field_size ? size_t(field_size) : cfg.buffer_size;
  cfg.limits.max_body = uint64_t(body_limit);
  cfg.websocket = asgi && ws;  // WSGI has no WebSocket: an Upgrade is a plain request there
  cfg.ws_max_size = uint64_t(ws_max_size);
  cfg.ws_ping_interval_ms = to_ms(ws_ping_interval);
  cfg.ws_ping_timeout_ms = to_ms(ws_ping_timeout);
  cfg.ws_deflate = ws_deflate;
  cfg.limit_concurrency = uint64_t(limit_concurrency);
  cfg.proxy_headers = proxy_headers;
  cfg.proxy_protocol = proxy_protocol;
  if (allow_ips && allow_ips != Py_None) {
    Ref items = Ref::steal(PySequence_Fast(allow_ips, "forwarded_allow_ips must be a sequence of strings"));
    if (!items) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items.get()); ++i) {
      PyObject* item = PySequence_Fast_GET_ITEM(items.get(), i);  // borrowed
      Py_ssize_t n;
      const char* text = PyUnicode_Check(item) ? PyUnicode_AsUTF8AndSize(item, &n) : nullptr;
      if (!text) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "forwarded_allow_ips items must be strings");
        return -1;
      }
      std::string_view t(text, size_t(n));
      http1::IpNet net;
      if (t == "*") {
        cfg.trusted.all = true;
      } else if (t == "unix") {
        cfg.trusted.unix_peers = true;
      } else if (http1::parse_ip_net(t, &net)) {
        cfg.trusted.nets.push_back(net);
      } else {
        PyErr_Format(PyExc_ValueError, "forwarded_allow_ips: %R is not an IP address or network", item);
        return -1;
      }
    }
  } else {
    http1::IpNet localhost;
    http1::parse_ip_net("127.0.0.1", &localhost);
    cfg.trusted.nets.push_back(localhost);
  }
  if (fwd_headers && fwd_headers != Py_None) {
    Ref items = Ref::steal(PySequence_Fast(fwd_headers, "forwarded_headers must be a sequence of strings"));
    if (!items) return -1;
    unsigned bits = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items.get()); ++i) {
      PyObject* item = PySequence_Fast_GET_ITEM(items.get(), i);  // borrowed
      Py_ssize_t n;
      const char* text = PyUnicode_Check(item) ? PyUnicode_AsUTF8AndSize(item, &n) : nullptr;
      if (!text) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "forwarded_headers items must be strings");
        return -1;
      }
      unsigned bit;
      if (!http1::parse_forwarded_header_name(std::string_view(text, size_t(n)), &bit)) {
        PyErr_Format(PyExc_ValueError,
                     "forwarded_headers: %R is not one of x-forwarded-for, x-forwarded-proto, "
                     "x-forwarded-host, x-forwarded-port, forwarded",
                     item);
        return -1;
      }
      bits |= bit;
    }
    if ((bits & http1::kForwardedRfc7239) && bits != http1::kForwardedRfc7239) {
      PyErr_SetString(PyExc_ValueError, "forwarded_headers: forwarded cannot be combined with x-forwarded-*");
      return -1;
    }
    if (!bits) {
      PyErr_SetString(PyExc_ValueError, "forwarded_headers must name at least one header");
      return -1;
    }
    cfg.forwarded_headers = bits;
  }
  cfg.shutdown_listeners = shutdown_listeners;
  cfg.supervisor_fd = supervisor_fd;
  cfg.heartbeat_interval_ms = to_ms(heartbeat);
  cfg.max_requests = uint64_t(max_requests);

  auto state = std::make_unique<State>();
  WsgiOptions opts;
  opts.root_path = root_path;
  opts.url_scheme = url_scheme;
  opts.multithread = threads > 1;
  opts.multiprocess = multiprocess;
  if (asgi) {
    auto h = AsgiHandler::create(app, error_log, infos, opts);
    if (!h) return -1;
    state->asgi = h.get();
    state->handler = std::move(h);
  } else {
    state->handler = WsgiHandler::create(app, error_log, infos, opts);
    if (!state->handler) return -1;
  }
  State* raw = state.get();
  state->handler->set_stop_callback([raw] { raw->server->stop(true); });
  state->threads = threads;
  state->server = std::make_unique<Server>(std::move(cfg), state->handler.get(), &state->logger);
  state->server->set_block_hooks(&state->block_hooks);
  self->state = state.release();
  return 0;
}

bool ready(ServerObject* self) {
  if (!self->state) {
    PyErr_SetString(PyExc_RuntimeError, "Server.__init__ was not called");
    return false;
  }
  return true;
}

PyObject* server_run(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (!ready(self)) return nullptr;
  State* s = self->state;
  if (s->running) {
    PyErr_SetString(PyExc_RuntimeError, "Server.run() is already running");
    return nullptr;
  }
  if (s->asgi) {
    PyErr_SetString(PyExc_RuntimeError, "an ASGI server is served with serve_asyncio(loop, state)");
    return nullptr;
  }
  s->running = true;
  int err;
  if (s->threads == 1) {
    err = s->server->run(&s->inline_hooks);
  } else {
    // The exit count is shared with the threads, so a thread that outlives us (stuck in the app)
    // never touches freed memory.
    struct Exits {
      std::mutex mu;
      std::condition_variable cv;
      int left;
    };
    auto exits = std::make_shared<Exits>();
    exits->left = s->threads;
    std::vector<std::thread> workers;
    Server* server = s->server.get();
    s->pool_hooks.main_state = PyEval_SaveThread();
    for (int i = 0; i < s->threads; ++i) {
      workers.emplace_back([server, exits] {
        PyGILState_STATE g = PyGILState_Ensure();
        PyThreadState* ts = PyEval_SaveThread();
        while (http1::Connection* c = server->pool_take()) {
          restore_thread(ts);
          c->serve_lent();
          ts = PyEval_SaveThread();
        }
        restore_thread(ts);
        PyGILState_Release(g);
        std::lock_guard<std::mutex> lk(exits->mu);
        --exits->left;
        exits->cv.notify_all();
      });
    }
    err = server->run(&s->pool_hooks);
    bool all_exited;
    {
      std::unique_lock<std::mutex> lk(exits->mu);
      all_exited = exits->cv.wait_for(lk, std::chrono::milliseconds(500), [&] { return exits->left == 0; });
    }
    for (auto& t : workers) {
      if (all_exited) t.join(); else t.detach();
    }
    restore_thread(s->pool_hooks.main_state);
    if (!all_exited) {
      // An app thread is stuck past the graceful timeout. It still references the engine, so the
      // engine is kept alive (leaked) for the rest of the process, which is about to exit.
      s->abandoned = true;
      s->handler->log_message("An app thread did not finish within the graceful timeout; exiting without it");
    }
  }
  s->running = false;
  if (!s->pending_type) {
    // KeyboardInterrupt / SystemExit raised inside the app stopped the server: re-raise it.
    s->handler->take_fatal(&s->pending_type, &s->pending_value, &s->pending_tb);
  }
  if (s->pending_type) {
    PyErr_Restore(s->pending_type, s->pending_value, s->pending_tb);
    s->pending_type = s->pending_value = s->pending_tb = nullptr;
    return nullptr;
  }
  if (err) {
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_RETURN_NONE;
}

int64_t mono_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Keeps one loop.call_later(step) armed for the engine's next timer. Deadlines only move later
// between requests (keep-alive), so the handle is replaced only when it would fire too late.
bool schedule_timer(State* s) {
  int next = s->server->next_timeout_ms();
  if (next < 0) {
    // Nothing to time any more (the last connection closed): an idle server must not wake up.
    if (s->timer_handle) {
      Ref r = Ref::steal(PyObject_CallMethod(s->timer_handle.get(), "cancel", nullptr));
      s->timer_handle.reset();
      s->timer_deadline_ms = -1;
      if (!r) return false;
    }
    return true;
  }
  int64_t due = mono_ms() + next;
  if (s->timer_handle && s->timer_deadline_ms >= 0 && s->timer_deadline_ms <= due + 1) return true;
  if (s->timer_handle) {
    Ref r = Ref::steal(PyObject_CallMethod(s->timer_handle.get(), "cancel", nullptr));
    if (!r) return false;
  }
  Ref delay = Ref::steal(PyFloat_FromDouble(next / 1000.0));
  if (!delay) return false;
  Ref args = Ref::steal(PyTuple_Pack(2, delay.get(), s->step_fn.get()));
  if (!args) return false;
  s->timer_handle = Ref::steal(PyObject_Call(s->call_later.get(), args.get(), s->ctx_kwargs.get()));
  s->timer_deadline_ms = due;
  return bool(s->timer_handle);
}

// Ends the kHop thread (called with the GIL held; it is released while joining, since the
// thread may be waiting for it).
void stop_hop_thread(State* s) {
  if (!s->hop_thread.joinable()) return;
  s->hop_stop.store(true);
  uint64_t one = 1;
  ssize_t w = write(s->hop_stop_fd, &one, sizeof one);
  (void)w;
  {
    std::lock_guard<std::mutex> lk(s->hop_mu);
    s->hop_cv.notify_all();
  }
  Py_BEGIN_ALLOW_THREADS s->hop_thread.join();
  Py_END_ALLOW_THREADS close(s->hop_stop_fd);
  s->hop_stop_fd = -1;
}

void finish_asyncio(State* s) {
  ErrorStash stash;
  stop_hop_thread(s);
  Ref r = s->bridge == State::Bridge::kReader
              ? Ref::steal(PyObject_CallMethod(s->loop.get(), "remove_reader", "i", s->server->epoll_fd()))
              : Ref::borrow(Py_None);
  if (!r) PyErr_Clear();
  if (s->timer_handle) {
    Ref c = Ref::steal(PyObject_CallMethod(s->timer_handle.get(), "cancel", nullptr));
    if (!c) PyErr_Clear();
  }
  Ref done = s->done_future;
  s->timer_handle.reset();
  s->step_fn.reset();  // breaks the server <-> step() reference cycle
  s->poll_fn.reset();
  s->hop_fn.reset();
  s->done_future.reset();
  s->running = false;
  PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
  s->handler->take_fatal(&t, &v, &tb);
  Ref type = Ref::steal(t), value = Ref::steal(v), trace = Ref::steal(tb);
  if (done) {
    // A KeyboardInterrupt/SystemExit from the app ends serving with that exception.
    Ref res = value ? Ref::steal(PyObject_CallMethod(done.get(), "set_exception", "O", value.get()))
                    : Ref::steal(PyObject_CallMethod(done.get(), "set_result", "O", Py_None));
    if (!res) PyErr_Clear();
  }
}

// server._step(): one engine step, from loop.add_reader, call_soon or call_later.
PyObject* server_step(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (!self->state || !self->state->step_fn) Py_RETURN_NONE;
  State* s = self->state;
  s->step_scheduled = false;
  if (s->timer_deadline_ms >= 0 && mono_ms() >= s->timer_deadline_ms) {
    s->timer_handle.reset();  // it fired (this may be it)
    s->timer_deadline_ms = -1;
  }
  if (!s->server->step(0)) {
    finish_asyncio(s);
    Py_RETURN_NONE;
  }
  if (!schedule_timer(s)) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef step_def = {"_step", server_step, METH_NOARGS, "One engine step (asyncio mode)."};

// bridge="poll": a step from every loop iteration while steps find I/O, else after 1 ms. Only
// this chain reschedules itself.
PyObject* server_poll_step(PyObject* o, PyObject*) {
  Ref r = Ref::steal(server_step(o, nullptr));
  if (!r) return nullptr;
  State* s = reinterpret_cast<ServerObject*>(o)->state;
  if (!s || !s->poll_fn) Py_RETURN_NONE;  // finished
  Ref h;
  if (s->server->last_step_events() > 0) {
    Ref args = Ref::steal(PyTuple_Pack(1, s->poll_fn.get()));
    if (args) h = Ref::steal(PyObject_Call(s->call_soon.get(), args.get(), s->ctx_kwargs.get()));
  } else {
    Ref delay = Ref::steal(PyFloat_FromDouble(0.001));
    Ref args = delay ? Ref::steal(PyTuple_Pack(2, delay.get(), s->poll_fn.get())) : Ref();
    if (args) h = Ref::steal(PyObject_Call(s->call_later.get(), args.get(), s->ctx_kwargs.get()));
  }
  if (!h) return nullptr;
  Py_RETURN_NONE;
}

// bridge="hop": the step the hop thread handed over; lets the thread wait for I/O again.
PyObject* server_hop_step(PyObject* o, PyObject*) {
  Ref r = Ref::steal(server_step(o, nullptr));
  State* s = reinterpret_cast<ServerObject*>(o)->state;
  if (s) {
    std::lock_guard<std::mutex> lk(s->hop_mu);
    s->hop_pending = false;
    s->hop_cv.notify_all();
  }
  return r.release();
}

PyMethodDef poll_def = {"_poll_step", server_poll_step, METH_NOARGS, "A polled engine step."};
PyMethodDef hop_def = {"_hop_step", server_hop_step, METH_NOARGS, "An engine step handed over by a thread."};

// The kHop thread: waits (without the GIL) until the engine's epoll fd is readable, hands a step
// to the loop with call_soon_threadsafe, and waits until that step ran.
void hop_main(State* s, int engine_fd) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = engine_fd;
  epoll_ctl(ep, EPOLL_CTL_ADD, engine_fd, &ev);
  ev.data.fd = s->hop_stop_fd;
  epoll_ctl(ep, EPOLL_CTL_ADD, s->hop_stop_fd, &ev);
  while (!s->hop_stop.load()) {
    epoll_event out[2];
    int n = epoll_wait(ep, out, 2, -1);
    if (n <= 0 || s->hop_stop.load()) continue;
    {
      std::lock_guard<std::mutex> lk(s->hop_mu);
      s->hop_pending = true;
    }
    PyGILState_STATE g = PyGILState_Ensure();
    bool handed = false;
    if (!s->hop_stop.load() && s->hop_fn) {
      Ref r = Ref::steal(PyObject_CallOneArg(s->call_soon_threadsafe.get(), s->hop_fn.get()));
      if (r) handed = true;
      else PyErr_WriteUnraisable(s->call_soon_threadsafe.get());
    }
    PyGILState_Release(g);
    std::unique_lock<std::mutex> lk(s->hop_mu);
    if (!handed) s->hop_pending = false;
    s->hop_cv.wait(lk, [s] { return !s->hop_pending || s->hop_stop.load(); });
  }
  close(ep);
}

PyObject* server_serve_asyncio(PyObject* o, PyObject* args, PyObject* kw) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (!ready(self)) return nullptr;
  State* s = self->state;
  PyObject *loop, *lstate = Py_None;
  const char* bridge = "reader";
  static const char* kwlist[] = {"loop", "state", "bridge", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O$s:serve_asyncio", const_cast<char**>(kwlist), &loop,
                                   &lstate, &bridge))
    return nullptr;
  State::Bridge mode;
  if (std::strcmp(bridge, "reader") == 0) mode = State::Bridge::kReader;
  else if (std::strcmp(bridge, "poll") == 0) mode = State::Bridge::kPoll;
  else if (std::strcmp(bridge, "hop") == 0) mode = State::Bridge::kHop;
  else {
    PyErr_Format(PyExc_ValueError, "bridge='%s': expected 'reader', 'poll' or 'hop'", bridge);
    return nullptr;
  }
  if (!s->asgi) {
    PyErr_SetString(PyExc_RuntimeError, "serve_asyncio() serves ASGI apps; this server is WSGI (use run())");
    return nullptr;
  }
  if (s->running) {
    PyErr_SetString(PyExc_RuntimeError, "the server is already running");
    return nullptr;
  }
  if (lstate != Py_None && !PyDict_Check(lstate)) {
    PyErr_SetString(PyExc_TypeError, "state must be a dict or None");
    return nullptr;
  }
  if (!s->asgi->attach(loop, lstate)) return nullptr;
  s->loop = Ref::borrow(loop);
  s->call_soon = Ref::steal(PyObject_GetAttrString(loop, "call_soon"));
  s->call_later = Ref::steal(PyObject_GetAttrString(loop, "call_later"));
  Ref done = Ref::steal(PyObject_CallMethod(loop, "create_future", nullptr));
  if (!s->call_soon || !s->call_later || !done) return nullptr;
  Ref step = Ref::steal(PyCFunction_New(&step_def, o));
  if (!step) return nullptr;
  Ref ctx = Ref::steal(PyContext_CopyCurrent());
  s->ctx_kwargs = ctx ? Ref::steal(Py_BuildValue("{sO}", "context", ctx.get())) : Ref();
  if (!s->ctx_kwargs) return nullptr;
  if (int err = s->server->start(&s->asyncio_hooks)) {
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  s->bridge = mode;
  Ref r;
  if (mode == State::Bridge::kReader) {
    r = Ref::steal(PyObject_CallMethod(loop, "add_reader", "iO", s->server->epoll_fd(), step.get()));
  } else if (mode == State::Bridge::kPoll) {
    s->poll_fn = Ref::steal(PyCFunction_New(&poll_def, o));
    Ref a = s->poll_fn ? Ref::steal(PyTuple_Pack(1, s->poll_fn.get())) : Ref();
    if (a) r = Ref::steal(PyObject_Call(s->call_soon.get(), a.get(), s->ctx_kwargs.get()));
  } else {
    s->hop_fn = Ref::steal(PyCFunction_New(&hop_def, o));
    s->call_soon_threadsafe = Ref::steal(PyObject_GetAttrString(loop, "call_soon_threadsafe"));
    s->hop_stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->hop_fn && s->call_soon_threadsafe && s->hop_stop_fd >= 0) {
      s->hop_stop.store(false);
      s->hop_pending = false;
      s->hop_thread = std::thread(hop_main, s, s->server->epoll_fd());
      r = Ref::borrow(Py_None);
    } else if (!PyErr_Occurred()) {
      PyErr_SetFromErrno(PyExc_OSError);
    }
  }
  if (!r) {
    s->server->stop(false);
    while (s->server->step(0)) {
    }
    return nullptr;
  }
  s->step_fn = step;
  s->done_future = done;
  s->running = true;
  s->timer_deadline_ms = -1;
  s->step_scheduled = false;
  if (!schedule_timer(s)) return nullptr;
  return done.release();
}

PyObject* server_stop(PyObject* o, PyObject* args, PyObject* kw) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (!ready(self)) return nullptr;
  static const char* kwlist[] = {"graceful", nullptr};
  int graceful = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", const_cast<char**>(kwlist), &graceful))
    return nullptr;
  self->state->server->stop(graceful != 0);
  Py_RETURN_NONE;
}

PyObject* server_stats(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (!ready(self)) return nullptr;
  ServerStats st = self->state->server->stats();
  return Py_BuildValue("{sKsKsKsKsK}", "connections_total", (unsigned long long)st.connections_total,
                       "connections_open", (unsigned long long)st.connections_open,
                       "requests_total", (unsigned long long)st.requests_total,
                       "buffers_allocated", (unsigned long long)st.buffers_allocated,
                       "connections_allocated", (unsigned long long)st.connections_allocated);
}

PyObject* server_wakeup_fd(PyObject* o, void*) {
  auto* self = reinterpret_cast<ServerObject*>(o);
  if (!ready(self)) return nullptr;
  return PyLong_FromLong(self->state->server->loop().wake_write_fd());
}

PyMethodDef server_methods[] = {
    {"run", server_run, METH_NOARGS, "Serve until stop(); returns after the graceful shutdown."},
    {"stop", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(server_stop)),
     METH_VARARGS | METH_KEYWORDS, "stop(graceful=True): stop serving (thread/signal safe)."},
    {"stats", server_stats, METH_NOARGS, "Engine counters as a dict."},
    {"serve_asyncio", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(server_serve_asyncio)),
     METH_VARARGS | METH_KEYWORDS,
     "serve_asyncio(loop, state=None, *, bridge='reader') -> Future: serve an ASGI app on a running\n"
     "asyncio loop. bridge='poll'/'hop' are the designs Fulmen measures itself against."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef server_getset[] = {
    {"wakeup_fd", server_wakeup_fd, nullptr, "Write end of the wake pipe (for signal.set_wakeup_fd).",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject ServerType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// Compiles an access-log format without starting anything, so that a bad --access-log-format
// is reported before the app is imported: returns None, or the error message.
PyObject* check_access_log_format(PyObject*, PyObject* arg) {
  Py_ssize_t n;
  const char* s = PyUnicode_AsUTF8AndSize(arg, &n);
  if (!s) return nullptr;
  http1::AccessFormat f;
  std::string err = f.compile(std::string_view(s, size_t(n)));
  if (err.empty()) Py_RETURN_NONE;
  return PyUnicode_FromStringAndSize(err.data(), Py_ssize_t(err.size()));
}

PyMethodDef module_methods[] = {
    {"check_access_log_format", check_access_log_format, METH_O,
     "check_access_log_format(format) -> None, or the message saying what is wrong with it."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_core",
                          "Fulmen's native engine (private: use the fulmen package).", -1,
                          module_methods};

}  // namespace
}  // namespace fulmen::bridge

PyMODINIT_FUNC PyInit__core(void) {
  using namespace fulmen::bridge;
  ServerType.tp_name = "fulmen._core.Server";
  ServerType.tp_basicsize = sizeof(ServerObject);
  ServerType.tp_flags = Py_TPFLAGS_DEFAULT;
  ServerType.tp_doc = "One worker's HTTP/1.1 engine (see fulmen/_core.pyi).";
  ServerType.tp_new = server_new;
  ServerType.tp_init = server_init;
  ServerType.tp_dealloc = server_dealloc;
  ServerType.tp_methods = server_methods;
  ServerType.tp_getset = server_getset;
  if (PyType_Ready(&ServerType) < 0) return nullptr;
  fulmen::bridge::Ref m = fulmen::bridge::Ref::steal(PyModule_Create(&module_def));
  if (!m) return nullptr;
  Py_INCREF(&ServerType);
  if (PyModule_AddObject(m.get(), "Server", reinterpret_cast<PyObject*>(&ServerType)) < 0) {
    Py_DECREF(&ServerType);
    return nullptr;
  }
  if (PyModule_AddStringConstant(m.get(), "__version__", "0.1.0") < 0) return nullptr;
  if (!wsgi_init_types(m.get())) return nullptr;
  if (!asgi_init_types(m.get())) return nullptr;
  return m.release();
}
