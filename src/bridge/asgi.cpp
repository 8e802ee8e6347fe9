// ASGI bridge; see asgi.hpp.
#include "bridge/asgi.hpp"
#include "bridge/asgi_internal.hpp"
#include "bridge/py_types.hpp"

#include <cstring>

#include "core/base/ascii.hpp"
#include "core/http1/status.hpp"

namespace fulmen::bridge {

using http1::Exchange;

namespace asgi {

// ---- constants ----------------------------------------------------------------------------------

Names* N = nullptr;

Ref str(const char* s) noexcept { return Ref::steal(PyUnicode_InternFromString(s)); }

// The coroutine every request runs in: it calls the app and reports how it ended, so the
// response can be completed (500, or a close) without a done-callback round trip.
constexpr const char* kRunHelper = R"PY(
async def run(app, scope, receive, send, call):
    try:
        await app(scope, receive, send)
    except BaseException as exc:
        call.app_error(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        call.app_done()
)PY";

bool init_names() noexcept {
  if (N) return true;
  auto* n = new Names();
#define K(f, s) n->f = str(s)
  K(type, "type"); K(asgi, "asgi"); K(http_version, "http_version"); K(method, "method");
  K(scheme, "scheme"); K(path, "path"); K(raw_path, "raw_path"); K(query_string, "query_string");
  K(root_path, "root_path"); K(headers, "headers"); K(client, "client"); K(server, "server");
  K(state, "state"); K(extensions, "extensions"); K(body, "body"); K(more_body, "more_body");
  K(status, "status"); K(http_request, "http.request"); K(http_disconnect, "http.disconnect");
  K(http_response_start, "http.response.start"); K(http_response_body, "http.response.body");
  K(set_result, "set_result"); K(done, "done"); K(create_future, "create_future");
  K(http, "http"); K(v1_1, "1.1"); K(v1_0, "1.0"); K(empty_str, ""); K(call_soon, "call_soon");
  K(https, "https"); K(wss, "wss"); K(add, "add");
#undef K
  n->empty_bytes = Ref::steal(PyBytes_FromStringAndSize(nullptr, 0));
  n->asgi_info = Ref::steal(Py_BuildValue("{ssss}", "version", "3.0", "spec_version", "2.4"));
  const char* names[10] = {nullptr, "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                           "CONNECT", "TRACE"};
  for (int i = 1; i < 10; ++i) n->methods[i] = str(names[i]);
  if (!ws_init_names(n)) {
    delete n;
    return false;
  }
  n->disconnect_msg = Ref::steal(PyDict_New());
  if (n->disconnect_msg && n->type)
    PyDict_SetItem(n->disconnect_msg.get(), n->type.get(), n->http_disconnect.get());
  // The helper coroutine, compiled once.
  Ref globals = Ref::steal(PyDict_New());
  if (globals) {
    PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
    Ref code = Ref::steal(Py_CompileString(kRunHelper, "<fulmen-asgi>", Py_file_input));
    Ref r = code ? Ref::steal(PyEval_EvalCode(code.get(), globals.get(), globals.get())) : Ref();
    if (r) n->run_helper = Ref::borrow(PyDict_GetItemString(globals.get(), "run"));
  }
  if (PyErr_Occurred() || !n->run_helper) {
    delete n;
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "fulmen: ASGI helper failed");
    return false;
  }
  N = n;
  return true;
}

// ---- an awaitable that is already complete ------------------------------------------------------

// `await Ready(v)` evaluates to v without suspending: no future, no loop iteration.
struct ReadyObject {
  PyObject_HEAD
  PyObject* value;  // owned; null means None
};

PyTypeObject ReadyType = {PyVarObject_HEAD_INIT(nullptr, 0)};

void ready_dealloc(PyObject* o) {
  Py_XDECREF(reinterpret_cast<ReadyObject*>(o)->value);
  Py_TYPE(o)->tp_free(o);
}

PyObject* ready_await(PyObject* o) {
  Py_INCREF(o);
  return o;
}

PyObject* ready_next(PyObject* o) {
  auto* self = reinterpret_cast<ReadyObject*>(o);
  PyObject* v = self->value;
  if (!v) return nullptr;  // StopIteration(None)
  // StopIteration(v): built explicitly so a tuple value is not taken for the exception's args.
  Ref exc = Ref::steal(PyObject_CallOneArg(PyExc_StopIteration, v));
  if (exc) PyErr_SetObject(PyExc_StopIteration, exc.get());
  return nullptr;
}

PyAsyncMethods ready_async = {ready_await, nullptr, nullptr, nullptr};

// The shared Ready(None). A raw pointer on purpose: a static Ref would be released by a C++
// destructor after the interpreter finalized (a crash at exit on 3.13).
PyObject* ready_none = nullptr;

// The "headers" of a response message (an iterable of [name, value] pairs of bytes) as views
// into the app's bytes objects, which `seq` keeps alive. A Content-Length among them is stored in
// *content_length. False with an error set.
bool parse_headers(PyObject* headers, Ref* seq_out, std::vector<http1::Header>& hs,
                   long long* content_length) noexcept {
  hs.clear();
  if (!headers) return true;
  Ref seq = Ref::steal(PySequence_Fast(headers, "response headers must be a list of [name, value] pairs"));
  if (!seq) return false;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.get());
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* pair = PySequence_Fast_GET_ITEM(seq.get(), i);  // borrowed
    PyObject *name, *value;
    if ((PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2)) {
      name = PyTuple_GET_ITEM(pair, 0);
      value = PyTuple_GET_ITEM(pair, 1);
    } else if (PyList_Check(pair) && PyList_GET_SIZE(pair) == 2) {
      name = PyList_GET_ITEM(pair, 0);
      value = PyList_GET_ITEM(pair, 1);
    } else {
      PyErr_Format(PyExc_TypeError, "response header %R must be a [name, value] pair", pair);
      return false;
    }
    if (!PyBytes_Check(name) || !PyBytes_Check(value)) {
      PyErr_Format(PyExc_TypeError, "response header %R: name and value must be bytes", pair);
      return false;
    }
    hs.push_back({std::string_view(PyBytes_AS_STRING(name), size_t(PyBytes_GET_SIZE(name))),
                  std::string_view(PyBytes_AS_STRING(value), size_t(PyBytes_GET_SIZE(value)))});
    uint64_t cl;
    if (content_length && base::iequals(hs.back().name, "content-length") &&
        base::parse_u64(hs.back().value, &cl))
      *content_length = (long long)cl;
  }
  *seq_out = std::move(seq);
  return true;
}

PyObject* ready_none_ref() noexcept { return Py_NewRef(ready_none); }

PyObject* make_ready(PyObject* value) noexcept {  // steals value (may be null for None)
  if (!value) {
    Py_INCREF(ready_none);
    return ready_none;
  }
  auto* r = PyObject_New(ReadyObject, &ReadyType);
  if (!r) {
    Py_DECREF(value);
    return nullptr;
  }
  r->value = value;
  return reinterpret_cast<PyObject*>(r);
}

// ---- the per-request object: receive() and the callbacks of the run helper ---------------------

struct CallObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;    // receive()
  AsgiHandler::Impl* h;         // borrowed; outlives every request
  Exchange* ex;                 // borrowed; null once the exchange finished or died
  PyObject* recv_future;        // owned: a pending receive(), if any
  PyObject* send_future;        // owned: a send() waiting for the socket to drain
  PyObject* task;               // owned: keeps the task alive (asyncio holds tasks weakly)
  bool started;                 // http.response.start was sent
  bool complete;                // the final body was sent
  bool disconnected;            // the client went away
  bool request_done;            // the last http.request (more_body=False) was delivered
  bool head;                    // HEAD request: body bytes are dropped by the engine
  long long declared;           // Content-Length the app declared, -1 if none
  long long sent;               // body bytes the app sent so far
};

struct SendObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;  // send(message)
  CallObject* call;           // owned
};

PyTypeObject CallType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject SendType = {PyVarObject_HEAD_INIT(nullptr, 0)};

// The stand-ins of start_task() (Python 3.10/3.11) for loop.call_soon and all_tasks.add: keeps
// the first single argument it gets (the new Task's first step, or the Task itself) and a
// context= keyword instead of passing them on; anything else goes to the real method.
struct StepCatcher {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* real;      // owned: the bound method it stands in for
  PyObject* callback;  // owned: the caught step, until start_task() runs it
  PyObject* context;   // owned: its context, or null
};

PyTypeObject StepCatcherType = {PyVarObject_HEAD_INIT(nullptr, 0)};

void catcher_dealloc(PyObject* o) {
  auto* k = reinterpret_cast<StepCatcher*>(o);
  Py_XDECREF(k->real);
  Py_XDECREF(k->callback);
  Py_XDECREF(k->context);
  Py_TYPE(o)->tp_free(o);
}

PyObject* catcher_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames);

// A stand-in for `real` (new ref, or null with an error set).
[[maybe_unused]] PyObject* new_catcher(PyObject* real) noexcept {
  if (!real) return nullptr;
  auto* k = PyObject_New(StepCatcher, &StepCatcherType);
  if (!k) return nullptr;
  k->vectorcall = catcher_call;
  k->real = Py_NewRef(real);
  k->callback = k->context = nullptr;
  return reinterpret_cast<PyObject*>(k);
}

PyObject* catcher_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* k = reinterpret_cast<StepCatcher*>(o);
  Py_ssize_t n = PyVectorcall_NARGS(nargsf);
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  PyObject* context = nullptr;
  bool plain = n == 1 && !k->callback && nkw <= 1;
  if (plain && nkw == 1) {
    if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "context") == 0) context = args[1];
    else plain = false;
  }
  if (!plain) return PyObject_Vectorcall(k->real, args, nargsf, kwnames);
  k->callback = Py_NewRef(args[0]);
  k->context = context && context != Py_None ? Py_NewRef(context) : nullptr;
  Py_RETURN_NONE;  // Task() only checks that call_soon did not raise
}

}  // namespace asgi

using namespace asgi;


namespace {

void call_dealloc(PyObject* o) {
  auto* c = reinterpret_cast<CallObject*>(o);
  Py_XDECREF(c->recv_future);
  Py_XDECREF(c->send_future);
  Py_XDECREF(c->task);
  Py_TYPE(o)->tp_free(o);
}

void send_dealloc(PyObject* o) {
  Py_XDECREF(reinterpret_cast<SendObject*>(o)->call);
  Py_TYPE(o)->tp_free(o);
}

PyObject* future(CallObject* c) noexcept { return PyObject_CallNoArgs(c->h->create_future.get()); }

// receive()
PyObject* call_receive(PyObject* o, PyObject* const*, size_t nargsf, PyObject* kwnames) {
  auto* c = reinterpret_cast<CallObject*>(o);
  if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "receive() takes no arguments");
    return nullptr;
  }
  if (c->recv_future) {
    PyErr_SetString(PyExc_RuntimeError, "receive() called while another receive() is pending");
    return nullptr;
  }
  if (c->disconnected || c->complete || !c->ex) {
    Py_INCREF(N->disconnect_msg.get());
    return make_ready(N->disconnect_msg.get());
  }
  if (!c->request_done) {
    std::string_view data;
    Exchange::BodyStatus st = c->ex->body_peek(&data, false);
    if (st != Exchange::BodyStatus::kWouldBlock) {
      PyObject* msg = c->h->body_message(c);
      return msg ? make_ready(msg) : nullptr;
    }
    c->ex->want_body(true);  // the engine reads for us now, and calls on_body_ready()
  }
  // Body delivered (or not here yet): wait for it, for the client to leave, or for the response
  // to complete.
  PyObject* fut = future(c);
  if (!fut) return nullptr;
  Py_INCREF(fut);
  c->recv_future = fut;
  return fut;
}

PyObject* runtime_error(const char* fmt, PyObject* type) {
  PyErr_Format(PyExc_RuntimeError, fmt, type);
  return nullptr;
}

// send(message)
PyObject* send_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  CallObject* c = reinterpret_cast<SendObject*>(o)->call;
  if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "send() takes exactly one argument (the message dict)");
    return nullptr;
  }
  PyObject* msg = args[0];
  if (!PyDict_Check(msg)) {
    PyErr_Format(PyExc_TypeError, "ASGI message must be a dict, not %.100s", Py_TYPE(msg)->tp_name);
    return nullptr;
  }
  PyObject* type = PyDict_GetItemWithError(msg, N->type.get());  // borrowed
  if (!type) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "ASGI message has no 'type'");
    return nullptr;
  }
  int is_start = PyUnicode_Check(type) ? PyUnicode_Compare(type, N->http_response_start.get()) == 0 : 0;
  int is_body = PyUnicode_Check(type) ? PyUnicode_Compare(type, N->http_response_body.get()) == 0 : 0;
  if (!is_start && !is_body) {
    return runtime_error("Unexpected ASGI message '%S' sent, for an HTTP request", type);
  }
  if (is_start) {
    if (c->started) return runtime_error("Expected ASGI message 'http.response.body', but got '%S'.", type);
    PyObject* status = PyDict_GetItemWithError(msg, N->status.get());  // borrowed
    if (!status || !PyLong_Check(status)) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "http.response.start needs an int 'status'");
      return nullptr;
    }
    long code = PyLong_AsLong(status);
    if (code == -1 && PyErr_Occurred()) return nullptr;
    PyObject* headers = PyDict_GetItemWithError(msg, N->headers.get());  // borrowed
    if (!headers && PyErr_Occurred()) return nullptr;
    std::vector<http1::Header>& hs = c->h->resp_headers;  // reused: no allocation per response
    Ref seq;
    if (!parse_headers(headers, &seq, hs, &c->declared)) return nullptr;
    if (c->disconnected || !c->ex) {
      c->started = true;  // nobody to send to (as Uvicorn: sends after a disconnect are dropped)
      Py_INCREF(ready_none);
      return ready_none;
    }
    if (code < 200 || code > 999) {
      PyErr_Format(PyExc_RuntimeError, "invalid HTTP status %ld in http.response.start", code);
      return nullptr;
    }
    switch (c->ex->start_response(int(code), {}, hs.data(), hs.size())) {
      case Exchange::StartError::kNone:
        break;
      case Exchange::StartError::kBadHeader:
        PyErr_SetString(PyExc_RuntimeError,
                        "invalid response header: bad name, CR/LF/NUL in a value, or a bad Content-Length");
        return nullptr;
      default:
        PyErr_Format(PyExc_RuntimeError, "invalid HTTP status %ld", code);
        return nullptr;
    }
    c->started = true;
    Py_INCREF(ready_none);
    return ready_none;
  }
  // http.response.body
  if (!c->started) return runtime_error("Expected ASGI message 'http.response.start', but got '%S'.", type);
  if (c->complete) return runtime_error("Unexpected ASGI message '%S' sent, after response already completed.", type);
  PyObject* body = PyDict_GetItemWithError(msg, N->body.get());  // borrowed
  if (!body && PyErr_Occurred()) return nullptr;
  PyObject* more = PyDict_GetItemWithError(msg, N->more_body.get());  // borrowed
  if (!more && PyErr_Occurred()) return nullptr;
  int more_body = more ? PyObject_IsTrue(more) : 0;
  if (more_body < 0) return nullptr;
  Py_buffer view{};
  bool have_view = false;
  if (body && body != Py_None) {
    if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "http.response.body 'body' must be bytes, not %.100s", Py_TYPE(body)->tp_name);
      return nullptr;
    }
    have_view = true;
  }
  // As Uvicorn: a body that does not match the declared Content-Length is the app's error.
  if (c->declared >= 0 && !c->head) {
    long long n = have_view ? (long long)view.len : 0;
    const char* problem = nullptr;
    if (c->sent + n > c->declared) problem = "Response content longer than Content-Length";
    else if (!more_body && c->sent + n < c->declared) problem = "Response content shorter than Content-Length";
    if (problem) {
      if (have_view) PyBuffer_Release(&view);
      PyErr_SetString(PyExc_RuntimeError, problem);
      return nullptr;
    }
    c->sent += n;
  }
  if (!more_body) c->complete = true;
  if (c->disconnected || !c->ex) {
    if (have_view) PyBuffer_Release(&view);
    Py_INCREF(ready_none);
    return ready_none;  // dropped, as Uvicorn does once the client is gone
  }
  Exchange* ex = c->ex;
  Exchange::WriteStatus ws = Exchange::WriteStatus::kOk;
  if (have_view && view.len > 0) ws = ex->write(static_cast<const char*>(view.buf), size_t(view.len));
  if (have_view) PyBuffer_Release(&view);
  if (ws == Exchange::WriteStatus::kError) {
    c->disconnected = true;
    if (!more_body) {
      ex->abort();
      c->h->detach(c);
    }
    Py_INCREF(ready_none);
    return ready_none;
  }
  if (!more_body) {
    ex->finish();
    c->h->detach(c);  // a pending receive() now gets http.disconnect
    Py_INCREF(ready_none);
    return ready_none;
  }
  if (ws == Exchange::WriteStatus::kPause) {
    // The socket is full: this send() completes when the engine drained the queue. Concurrent
    // sends (from several tasks) share the one future, so none is left waiting.
    if (!c->send_future && !(c->send_future = future(c))) return nullptr;
    return Py_NewRef(c->send_future);
  }
  Py_INCREF(ready_none);
  return ready_none;
}

// call.app_done() / call.app_error(exc): from the run helper when the app's coroutine ended.
PyObject* call_app_done(PyObject* o, PyObject*) {
  auto* c = reinterpret_cast<CallObject*>(o);
  Py_CLEAR(c->task);
  if (c->ex && !c->disconnected) {
    if (!c->started) {
      c->h->outer->log_message("ASGI callable returned without starting response.");
      c->ex->send_simple(500, "Internal Server Error\n", true);
    } else if (!c->complete) {
      c->h->outer->log_message("ASGI callable returned without completing response.");
      c->ex->abort();
    }
  } else if (c->ex) {
    c->ex->abort();  // the client is gone: close what is left
  }
  c->h->detach(c);
  Py_RETURN_NONE;
}

PyObject* call_app_error(PyObject* o, PyObject* exc) {
  auto* c = reinterpret_cast<CallObject*>(o);
  Py_CLEAR(c->task);
  if (PyObject_IsInstance(exc, PyExc_Exception) == 1) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    c->h->outer->log_exception("Exception in ASGI application");
  }
  if (c->ex) {
    if (!c->started && !c->disconnected) {
      c->ex->send_simple(500, "Internal Server Error\n", true);
    } else {
      c->ex->abort();
    }
  }
  c->h->detach(c);
  Py_RETURN_NONE;
}

PyMethodDef call_methods[] = {
    {"app_done", call_app_done, METH_NOARGS, nullptr},
    {"app_error", call_app_error, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// ---- the handler -------------------------------------------------------------------------------

void AsgiHandler::Impl::resolve(PyObject** fut, PyObject* value) noexcept {
  if (!*fut) return;
  Ref f = Ref::steal(*fut);
  *fut = nullptr;
  Ref done = Ref::steal(PyObject_CallMethodNoArgs(f.get(), N->done.get()));
  if (!done) {
    outer->log_exception("asyncio future failed");
    return;
  }
  if (done.get() == Py_True) return;  // cancelled by the app: nothing to deliver
  Ref r = Ref::steal(PyObject_CallMethodOneArg(f.get(), N->set_result.get(), value ? value : Py_None));
  if (!r) outer->log_exception("asyncio future failed");
}

// The exchange is over for this call (finished, aborted or dead): forget it, and answer a
// pending receive() with http.disconnect.
void AsgiHandler::Impl::detach(CallObject* c) noexcept {
  Ref keep = Ref::borrow(reinterpret_cast<PyObject*>(c));  // alive while we resolve its futures
  if (c->ex) {
    c->ex->app_state = nullptr;
    c->ex = nullptr;
    Py_DECREF(reinterpret_cast<PyObject*>(c));  // the reference the exchange held
  }
  resolve(&c->recv_future, N->disconnect_msg.get());
  resolve(&c->send_future, nullptr);
}

// An http.request message with whatever body is buffered (or an error turned into a disconnect).
PyObject* AsgiHandler::Impl::body_message(CallObject* c) noexcept {
  Exchange* ex = c->ex;
  std::string_view data;
  Exchange::BodyStatus st = ex->body_peek(&data, false);
  if (st == Exchange::BodyStatus::kError) {
    c->disconnected = true;
    if (!c->started) {
      auto err = ex->body_error();
      if (err == Exchange::BodyError::kMalformed) {
        c->started = c->complete = true;
        ex->send_simple(400, "Bad Request: malformed request body\n", true);
      } else if (err == Exchange::BodyError::kTooLarge) {
        c->started = c->complete = true;
        ex->send_simple(413, "Content Too Large: request body over the limit\n", true);
      }
    }
    Py_INCREF(N->disconnect_msg.get());
    return N->disconnect_msg.get();
  }
  Ref body;
  if (st == Exchange::BodyStatus::kData) {
    body = Ref::steal(PyBytes_FromStringAndSize(data.data(), Py_ssize_t(data.size())));
    if (!body) return nullptr;
    ex->body_consume(data.size());
  } else {
    body = N->empty_bytes;
  }
  bool more = !ex->body_finished();
  if (!more) c->request_done = true;
  return Py_BuildValue("{sOsOsO}", "type", N->http_request.get(), "body", body.get(), "more_body",
                       more ? Py_True : Py_False);
}

// The scope's keys in the order Uvicorn gives them, constants filled in: each request's scope is
// a copy (one allocation of the right size, keys shared) whose other values are then replaced.
bool AsgiHandler::Impl::build_scope_proto() noexcept {
  Ref d = Ref::steal(PyDict_New());
  if (!d) return false;
  PyObject* keys[] = {N->type.get(), N->asgi.get(), N->http_version.get(), N->method.get(),
                      N->scheme.get(), N->path.get(), N->raw_path.get(), N->query_string.get(),
                      N->root_path.get(), N->headers.get(), N->client.get(), N->server.get(),
                      N->state.get(), N->extensions.get()};
  for (PyObject* k : keys) {
    if (k == N->state.get() && !state) continue;
    PyObject* v = Py_None;
    if (k == N->type.get() || k == N->scheme.get()) v = N->http.get();
    else if (k == N->asgi.get()) v = N->asgi_info.get();
    else if (k == N->root_path.get()) v = root_path_str.get();
    if (PyDict_SetItem(d.get(), k, v) < 0) return false;
  }
  scope_proto = std::move(d);
  return true;
}

PyObject* AsgiHandler::Impl::client_tuple(std::string_view addr, int port) noexcept {
  ClientEntry& e = clients[(uint32_t(port) * 2654435761u) >> 26];
  if (e.tuple && e.port == port && e.addr == addr) return Py_NewRef(e.tuple.get());
  Ref host = Ref::steal(PyUnicode_DecodeLatin1(addr.data(), Py_ssize_t(addr.size()), nullptr));
  Ref t = host ? Ref::steal(Py_BuildValue("(Oi)", host.get(), port)) : Ref();
  if (!t) return nullptr;
  e.port = port;
  e.addr.assign(addr);
  e.tuple = t;
  return t.release();
}

// The fields every scope has, from the request: path (root_path + the percent-decoded target
// path, UTF-8 with invalid bytes replaced, as Uvicorn does), raw_path, query_string, headers,
// client, server, state.
bool AsgiHandler::Impl::fill_request(PyObject* d, Exchange& ex) noexcept {
  const http1::Request& rq = ex.request();
  auto set = [d](PyObject* k, PyObject* v) -> bool {  // v: new reference
    if (!v) return false;
    int r = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return r == 0;
  };
  auto set_borrowed = [d](PyObject* k, PyObject* v) -> bool { return PyDict_SetItem(d, k, v) == 0; };
  // path: root_path + the percent-decoded target path, UTF-8 with invalid bytes replaced (as
  // Uvicorn does); raw_path: the same bytes undecoded.
  std::string& buf = scratch;
  buf.assign(root_path);
  std::string_view raw = rq.path;
  base::append_percent_decoded(raw, buf);
  if (!set(N->path.get(), PyUnicode_DecodeUTF8(buf.data(), Py_ssize_t(buf.size()), "replace"))) return false;
  buf.assign(root_path);
  buf.append(raw);
  if (!set(N->raw_path.get(), PyBytes_FromStringAndSize(buf.data(), Py_ssize_t(buf.size())))) return false;
  if (!set(N->query_string.get(), rq.query.empty() ? Py_NewRef(N->empty_bytes.get())
                                                   : PyBytes_FromStringAndSize(rq.query.data(), Py_ssize_t(rq.query.size()))))
    return false;
  Ref headers = Ref::steal(PyList_New(Py_ssize_t(rq.num_headers)));
  if (!headers) return false;
  char lower[256];
  for (size_t i = 0; i < rq.num_headers; ++i) {
    const http1::Header& hd = rq.headers[i];
    PyObject* name;
    if (hd.name.size() <= sizeof lower) {
      for (size_t j = 0; j < hd.name.size(); ++j) lower[j] = base::ascii_lower(hd.name[j]);
      name = PyBytes_FromStringAndSize(lower, Py_ssize_t(hd.name.size()));
    } else {
      name = PyBytes_FromStringAndSize(hd.name.data(), Py_ssize_t(hd.name.size()));
      if (name) {
        char* p = PyBytes_AS_STRING(name);
        for (Py_ssize_t j = 0; j < PyBytes_GET_SIZE(name); ++j) p[j] = base::ascii_lower(p[j]);
      }
    }
    PyObject* value = PyBytes_FromStringAndSize(hd.value.data(), Py_ssize_t(hd.value.size()));
    PyObject* pair = (name && value) ? PyTuple_Pack(2, name, value) : nullptr;
    Py_XDECREF(name);
    Py_XDECREF(value);
    if (!pair) return false;
    PyList_SET_ITEM(headers.get(), Py_ssize_t(i), pair);
  }
  if (!set_borrowed(N->headers.get(), headers.get())) return false;
  const http1::ForwardedInfo* fw = ex.forwarded();  // --proxy-headers, from a trusted proxy
  if (fw && !fw->client.empty()) {
    if (!set(N->client.get(), client_tuple(fw->client, fw->client_port))) return false;
  } else if (!ex.remote_addr().empty() && !set(N->client.get(), client_tuple(ex.remote_addr(), ex.remote_port()))) {
    return false;
  }
  PyObject* server = server_tuples[size_t(ex.listener_index())].get();  // borrowed
  // A forwarded host, or a forwarded port on a TCP listener (a Unix listener has no host to keep).
  if (fw && (!fw->server_name.empty() || (fw->server_port >= 0 && server != Py_None))) {
    std::string_view name = fw->server_name;
    if (name.size() >= 2 && name.front() == '[') name = name.substr(1, name.size() - 2);  // IPv6
    Ref host = name.empty() && server != Py_None ? Ref::borrow(PyTuple_GET_ITEM(server, 0))
                                                 : Ref::steal(PyUnicode_DecodeLatin1(name.data(), Py_ssize_t(name.size()), nullptr));
    int port = fw->server_port >= 0 ? fw->server_port : 0;
    if (!host || !set(N->server.get(), Py_BuildValue("(Oi)", host.get(), port))) return false;
  } else if (!set_borrowed(N->server.get(), server)) {
    return false;
  }
  if (fw && !fw->scheme.empty()) {
    bool tls = fw->scheme == "https";
    PyObject* scheme = ex.is_websocket() ? (tls ? N->wss.get() : N->ws.get()) : (tls ? N->https.get() : N->http.get());
    if (!set_borrowed(N->scheme.get(), scheme)) return false;
  }
  if (state && !set(N->state.get(), PyDict_Copy(state.get()))) return false;
  return true;
}

PyObject* AsgiHandler::Impl::build_scope(Exchange& ex) noexcept {
  const http1::Request& rq = ex.request();
  Ref scope = Ref::steal(PyDict_Copy(scope_proto.get()));
  if (!scope) return nullptr;
  PyObject* d = scope.get();
  auto set = [d](PyObject* k, PyObject* v) -> bool {  // v: new reference
    if (!v) return false;
    int r = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return r == 0;
  };
  auto set_borrowed = [d](PyObject* k, PyObject* v) -> bool { return PyDict_SetItem(d, k, v) == 0; };
  if (!set_borrowed(N->http_version.get(), rq.version_minor ? N->v1_1.get() : N->v1_0.get())) return nullptr;
  int mid = int(rq.method_id);
  if (mid > 0 && mid < 10) {
    if (!set_borrowed(N->method.get(), N->methods[mid].get())) return nullptr;
  } else if (!set(N->method.get(), PyUnicode_DecodeLatin1(rq.method.data(), Py_ssize_t(rq.method.size()), nullptr))) {
    return nullptr;
  }
  if (!fill_request(d, ex)) return nullptr;
  if (!set(N->extensions.get(), PyDict_New())) return nullptr;
  return scope.release();
}

std::unique_ptr<AsgiHandler> AsgiHandler::create(PyObject* app, PyObject* error_log,
                                                 const std::vector<ListenerInfo>& listeners,
                                                 const WsgiOptions& options) noexcept {
  if (!init_names()) return nullptr;
  std::unique_ptr<AsgiHandler> h(new AsgiHandler(error_log));
  h->impl_ = std::make_unique<Impl>();
  Impl& im = *h->impl_;
  im.outer = h.get();
  im.app = Ref::borrow(app);
  im.root_path = options.root_path;
  while (!im.root_path.empty() && im.root_path.back() == '/') im.root_path.pop_back();
  im.resp_headers.reserve(32);
  im.root_path_str = Ref::steal(PyUnicode_DecodeUTF8(im.root_path.data(), Py_ssize_t(im.root_path.size()), "replace"));
  if (!im.root_path_str) return nullptr;
  for (const ListenerInfo& li : listeners) {
    Ref t = li.is_unix ? Ref::borrow(Py_None)
                       : Ref::steal(Py_BuildValue("(si)", li.server_name.c_str(), li.server_port));
    if (!t) return nullptr;
    im.server_tuples.push_back(std::move(t));
  }
  return h;
}

AsgiHandler::AsgiHandler(PyObject* error_log) noexcept : PyHandler(error_log) {}

AsgiHandler::~AsgiHandler() = default;

bool AsgiHandler::attach(PyObject* loop, PyObject* state) noexcept {
  Impl& im = *impl_;
  im.loop = Ref::borrow(loop);
  im.state = state && state != Py_None ? Ref::borrow(state) : Ref();
  im.create_future = Ref::steal(PyObject_GetAttr(loop, N->create_future.get()));
  if (!im.create_future || !im.build_scope_proto() || !ws_attach(im)) return false;
  Ref asyncio = Ref::steal(PyImport_ImportModule("asyncio"));
  if (!asyncio) return false;
  im.task_type = Ref::steal(PyObject_GetAttrString(asyncio.get(), "Task"));
  if (!im.task_type) return false;
  im.task_name = Ref::steal(PyUnicode_InternFromString("fulmen.asgi"));
  if (!im.task_name) return false;
#if PY_VERSION_HEX >= 0x030C0000
  // asyncio.Task(coro, loop=loop, name=..., eager_start=True) runs the coroutine up to its first
  // real wait right away.
  im.task_kwnames = Ref::steal(Py_BuildValue("(sss)", "loop", "name", "eager_start"));
  return bool(im.task_kwnames);
#else
  im.task_kwnames = Ref::steal(Py_BuildValue("(ss)", "loop", "name"));
  if (!im.task_kwnames) return false;
  im.loop_dict = Ref::steal(PyObject_GenericGetDict(loop, nullptr));
  if (!im.loop_dict) {
    PyErr_Clear();  // no instance dict (uvloop's own Loop type): tasks are scheduled normally
    return true;
  }
  im.real_call_soon = Ref::steal(PyObject_GetAttr(loop, N->call_soon.get()));
  im.step_catcher = Ref::steal(new_catcher(im.real_call_soon.get()));
  if (!im.step_catcher) return false;
  // The registry Task() adds itself to (asyncio.tasks._all_tasks is _asyncio's).
  Ref mod = Ref::steal(PyImport_ImportModule("_asyncio"));
  Ref all_tasks = mod ? Ref::steal(PyObject_GetAttrString(mod.get(), "_all_tasks")) : Ref();
  Ref all_dict = all_tasks ? Ref::steal(PyObject_GenericGetDict(all_tasks.get(), nullptr)) : Ref();
  if (!all_dict) {
    PyErr_Clear();  // no C accelerator or no instance dict: tasks register themselves
    return true;
  }
  Ref real_add = Ref::steal(PyObject_GetAttr(all_tasks.get(), N->add.get()));
  im.add_catcher = Ref::steal(new_catcher(real_add.get()));
  if (!im.add_catcher) return false;
  im.all_tasks = std::move(all_tasks);
  im.all_tasks_dict = std::move(all_dict);
  return true;
#endif
}

// A Task for the request's coroutine whose first step has already run (it may be done).
PyObject* AsgiHandler::Impl::start_task(PyObject* coro) noexcept {
#if PY_VERSION_HEX >= 0x030C0000
  PyObject* args[4] = {coro, loop.get(), task_name.get(), Py_True};
  return PyObject_Vectorcall(task_type.get(), args, 1, task_kwnames.get());
#else
  PyObject* args[3] = {coro, loop.get(), task_name.get()};
  // Someone (a tracing library, the app) patched loop.call_soon on the instance: leave it be.
  int patched = loop_dict ? PyDict_Contains(loop_dict.get(), N->call_soon.get()) : 1;
  if (patched) {
    if (patched < 0) PyErr_Clear();
    return PyObject_Vectorcall(task_type.get(), args, 1, task_kwnames.get());
  }
  // The same for all_tasks.add; without it the task registers itself as usual.
  int add_patched = all_tasks_dict ? PyDict_Contains(all_tasks_dict.get(), N->add.get()) : 1;
  if (add_patched < 0) PyErr_Clear();
  bool shadow_add = add_patched == 0;
  if (shadow_add && PyDict_SetItem(all_tasks_dict.get(), N->add.get(), add_catcher.get()) < 0)
    return nullptr;
  if (PyDict_SetItem(loop_dict.get(), N->call_soon.get(), step_catcher.get()) < 0) {
    ErrorStash stash;
    if (shadow_add && PyDict_DelItem(all_tasks_dict.get(), N->add.get()) < 0) PyErr_Clear();
    return nullptr;
  }
  Ref task = Ref::steal(PyObject_Vectorcall(task_type.get(), args, 1, task_kwnames.get()));
  {
    ErrorStash stash;  // the shadows go whatever happened
    if (PyDict_DelItem(loop_dict.get(), N->call_soon.get()) < 0) PyErr_Clear();
    if (shadow_add && PyDict_DelItem(all_tasks_dict.get(), N->add.get()) < 0) PyErr_Clear();
  }
  auto* k = reinterpret_cast<StepCatcher*>(step_catcher.get());
  Ref step = Ref::steal(k->callback);
  Ref ctx = Ref::steal(k->context);
  k->callback = k->context = nullptr;
  // What Task() registered through the stand-in: the task itself, or another thread's task
  // that got there first (the registry is shared by every thread).
  Ref added;
  if (shadow_add) {
    auto* a = reinterpret_cast<StepCatcher*>(add_catcher.get());
    added = Ref::steal(a->callback);
    Py_CLEAR(a->context);
    a->callback = nullptr;
  }
  // Registers what was caught, as Task() meant to, except our own task once its first step
  // finished it (a done task would leave the registry when freed anyway). `add` is looked up
  // now, so a patch of WeakSet.add made since attach() is used. Never fails: whatever error is
  // pending stays, and a failure to register is reported as unraisable.
  auto settle_registration = [&](bool step_ran) {
    if (!added) return;
    ErrorStash stash;
    if (step_ran && added.get() == task.get()) {
      Ref done = Ref::steal(PyObject_CallMethodNoArgs(task.get(), N->done.get()));
      if (done.get() == Py_True) return;
      if (!done) PyErr_Clear();  // cannot tell: register it
    }
    Ref add = Ref::steal(PyObject_GetAttr(all_tasks.get(), N->add.get()));
    Ref r = add ? Ref::steal(PyObject_CallOneArg(add.get(), added.get())) : Ref();
    if (!r) PyErr_WriteUnraisable(added.get());
  };
  if (!task || !step) {
    // Not made, or its step not caught (the loop runs it as usual): register what was caught.
    settle_registration(false);
    return task.release();
  }
  // As Handle._run does: the step runs in the task's context.
  if (ctx && PyContext_Enter(ctx.get()) < 0) {
    settle_registration(false);
    return nullptr;
  }
  Ref r = Ref::steal(PyObject_CallNoArgs(step.get()));
  if (ctx) {
    ErrorStash stash;
    if (PyContext_Exit(ctx.get()) < 0) PyErr_Clear();
  }
  settle_registration(true);
  // The step raises only what a task re-raises (KeyboardInterrupt, SystemExit): the caller
  // stops the server. The task has recorded it too.
  if (!r) return nullptr;
  return task.release();
#endif
}

void AsgiHandler::on_request(Exchange& ex) noexcept {
  Impl& im = *impl_;
  ex.detach();
  if (ex.is_websocket()) {
    ws_on_request(im, ex);
    return;
  }
  auto* c = PyObject_New(CallObject, &CallType);
  if (!c) {
    log_exception("Out of memory starting an ASGI request");
    ex.send_simple(500, "Internal Server Error\n", true);
    return;
  }
  c->vectorcall = call_receive;
  c->h = &im;
  c->ex = &ex;
  c->recv_future = c->send_future = c->task = nullptr;
  c->started = c->complete = c->disconnected = c->request_done = false;
  c->head = ex.request().method_id == http1::Method::kHead;
  c->declared = -1;
  c->sent = 0;
  ex.app_state = c;  // the exchange holds this reference until detach()
  Ref send;
  if (auto* s = PyObject_New(SendObject, &SendType)) {
    s->vectorcall = send_call;
    Py_INCREF(c);
    s->call = c;
    send = Ref::steal(reinterpret_cast<PyObject*>(s));
  }
  Ref scope = send ? Ref::steal(im.build_scope(ex)) : Ref();
  Ref coro;
  if (scope) {
    PyObject* args[5] = {im.app.get(), scope.get(), reinterpret_cast<PyObject*>(c), send.get(),
                         reinterpret_cast<PyObject*>(c)};
    coro = Ref::steal(PyObject_Vectorcall(N->run_helper.get(), args, 5, nullptr));
  }
  Ref task;
  if (coro) {
    Ref c_ref = Ref::borrow(reinterpret_cast<PyObject*>(c));  // the task may finish eagerly
    task = Ref::steal(im.start_task(coro.get()));
    if (task && c->ex && !c->task) {
      // Still running (not finished eagerly): keep it alive until it reports back.
      c->task = task.release();
    }
    if (task || c->task) return;
  }
  // Could not even start the app. An eager task re-raises KeyboardInterrupt/SystemExit from its
  // first step right here: that stops the server (serve_asyncio's future raises it).
  if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
    set_fatal();
  } else {
    log_exception("Exception in ASGI application");
  }
  if (c->ex) {
    ex.send_simple(500, "Internal Server Error\n", true);
    im.detach(c);
  }
}

void AsgiHandler::on_resume(Exchange& ex) noexcept {
  if (is_ws_call(ex.app_state)) return ws_on_resume(*impl_, ex);
  auto* c = static_cast<CallObject*>(ex.app_state);
  if (c) impl_->resolve(&c->send_future, nullptr);
}

void AsgiHandler::on_body_ready(Exchange& ex) noexcept {
  if (is_ws_call(ex.app_state)) return;  // a handshake has no body
  auto* c = static_cast<CallObject*>(ex.app_state);
  if (!c || !c->recv_future) return;
  Ref msg = Ref::steal(impl_->body_message(c));
  if (!msg) {
    log_exception("Error reading the request body");
    msg = N->disconnect_msg;
  }
  impl_->resolve(&c->recv_future, msg.get());
}

void AsgiHandler::on_disconnect(Exchange& ex) noexcept {
  if (is_ws_call(ex.app_state)) return ws_on_disconnect(*impl_, ex);
  auto* c = static_cast<CallObject*>(ex.app_state);
  if (!c) return;
  c->disconnected = true;
  impl_->resolve(&c->recv_future, N->disconnect_msg.get());
  impl_->resolve(&c->send_future, nullptr);
}

void AsgiHandler::on_ws_message(Exchange& ex, bool binary, std::string_view data) noexcept {
  ws_on_message(*impl_, ex, binary, data);
}

void AsgiHandler::on_ws_masked_message(Exchange& ex, char* data, size_t n, const uint8_t key[4],
                                       size_t phase) noexcept {
  ws_on_masked_message(*impl_, ex, data, n, key, phase);
}

void AsgiHandler::on_ws_closed(Exchange& ex, uint16_t code, std::string_view reason) noexcept {
  ws_on_closed(*impl_, ex, code, reason);
}

void AsgiHandler::on_abort(Exchange& ex) noexcept {
  if (is_ws_call(ex.app_state)) return ws_on_abort(*impl_, ex);
  auto* c = static_cast<CallObject*>(ex.app_state);
  if (!c) return;
  c->disconnected = true;
  impl_->detach(c);
}

bool asgi_init_types(PyObject* module) noexcept {
  ReadyType.tp_name = "fulmen._core.Ready";
  ReadyType.tp_basicsize = sizeof(ReadyObject);
  ReadyType.tp_flags = Py_TPFLAGS_DEFAULT;
  ReadyType.tp_dealloc = ready_dealloc;
  ReadyType.tp_as_async = &ready_async;
  ReadyType.tp_iter = PyObject_SelfIter;
  ReadyType.tp_iternext = ready_next;
  ReadyType.tp_doc = "An awaitable that is already complete";

  init_callable_type<CallObject>(CallType, "fulmen._core.Receive", call_dealloc,
                                 "The receive() callable of one ASGI HTTP request", call_methods);
  init_callable_type<SendObject>(SendType, "fulmen._core.Send", send_dealloc,
                                 "The send() callable of one ASGI HTTP request");
  init_callable_type<StepCatcher>(
      StepCatcherType, "fulmen._core.StepCatcher", catcher_dealloc,
      "Stands in for loop.call_soon while an ASGI task is made (Python < 3.12)");

  if (PyType_Ready(&ReadyType) < 0 || PyType_Ready(&CallType) < 0 || PyType_Ready(&SendType) < 0 ||
      PyType_Ready(&StepCatcherType) < 0 || !ws_init_types(module))
    return false;
  auto* r = PyObject_New(ReadyObject, &ReadyType);
  if (!r) return false;
  r->value = nullptr;
  ready_none = reinterpret_cast<PyObject*>(r);
  (void)module;
  return true;
}

}  // namespace fulmen::bridge
