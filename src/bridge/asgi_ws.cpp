// ASGI WebSocket (https://asgi.readthedocs.io/en/latest/specs/www.html#websocket) on the engine's
// WebSocket exchanges. One WsCall per connection is the app's receive() and carries its state; a
// WsSend is its send(). The app runs in a Task started like an HTTP request's (asgi.cpp).
//
// Messages the engine reads are turned into dicts at once: handed to a waiting receive(), or
// queued here up to kMaxQueued messages / kMaxQueuedBytes, beyond which the engine stops reading
// (Exchange::ws_want) until the app catches up. Reading ahead that far is what keeps pings and
// the client's close answered while an app only sends.
#include <algorithm>
#include <cstring>
#include <iterator>

#include "bridge/asgi_internal.hpp"
#include "bridge/py_types.hpp"
#include "core/ws/frame.hpp"

namespace fulmen::bridge {
namespace asgi {

namespace {

constexpr Py_ssize_t kMaxQueued = 32;           // messages read ahead of the app (as Uvicorn's ws_max_queue)
constexpr size_t kMaxQueuedBytes = 1024 * 1024;  // ... and their bytes (one larger message always fits)

struct WsCall {
  PyObject_HEAD
  vectorcallfunc vectorcall;  // receive()
  AsgiHandler::Impl* h;       // borrowed; outlives every connection
  Exchange* ex;               // borrowed; null once the exchange is finished or dead
  PyObject* recv_future;      // owned: a pending receive()
  PyObject* send_future;      // owned: a send() waiting for the socket to drain
  PyObject* task;             // owned: keeps the task alive until it reports back
  PyObject* queue;            // owned list: messages read but not yet received; [head:] pending
  Py_ssize_t head;
  size_t queued_bytes;
  PyObject* close_reason;     // owned str: for websocket.disconnect
  int close_code;             // for websocket.disconnect
  bool connect_given;         // websocket.connect was received
  bool accepted;
  bool response_started;      // websocket.http.response.start was sent (a denial)
  bool closed;                // the app closed (websocket.close, or the denial is complete)
  bool peer_closed;           // the connection ended: receive() gives websocket.disconnect
  bool reading;               // the engine reads for us (Exchange::ws_want)
};

struct WsSend {
  PyObject_HEAD
  vectorcallfunc vectorcall;  // send(message)
  WsCall* call;               // owned
};

PyTypeObject WsCallType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject WsSendType = {PyVarObject_HEAD_INIT(nullptr, 0)};

void wscall_dealloc(PyObject* o) {
  auto* c = reinterpret_cast<WsCall*>(o);
  Py_XDECREF(c->recv_future);
  Py_XDECREF(c->send_future);
  Py_XDECREF(c->task);
  Py_XDECREF(c->queue);
  Py_XDECREF(c->close_reason);
  Py_TYPE(o)->tp_free(o);
}

void wssend_dealloc(PyObject* o) {
  Py_XDECREF(reinterpret_cast<WsSend*>(o)->call);
  Py_TYPE(o)->tp_free(o);
}

PyObject* ready_none() noexcept { return ready_none_ref(); }

void resolve(WsCall* c, PyObject** fut, PyObject* value) noexcept { c->h->resolve(fut, value); }

// {"type": "websocket.disconnect", "code": ..., "reason": ...}: new reference or null.
PyObject* disconnect_message(WsCall* c) noexcept {
  return Py_BuildValue("{sOsisO}", "type", N->websocket_disconnect.get(), "code", c->close_code,
                       "reason", c->close_reason ? c->close_reason : N->empty_str.get());
}

void set_closed(WsCall* c, int code, std::string_view reason) noexcept {
  c->peer_closed = true;
  c->close_code = code;
  Py_CLEAR(c->close_reason);
  if (!reason.empty()) {
    c->close_reason = PyUnicode_DecodeUTF8(reason.data(), Py_ssize_t(reason.size()), "replace");
    if (!c->close_reason) PyErr_Clear();  // out of memory: an empty reason will do
  }
}

// The connection is over for this call: forget the exchange, answer what is pending.
void detach(WsCall* c) noexcept {
  Ref keep = Ref::borrow(reinterpret_cast<PyObject*>(c));
  if (c->ex) {
    c->ex->app_state = nullptr;
    c->ex = nullptr;
    Py_DECREF(reinterpret_cast<PyObject*>(c));  // the exchange's reference
  }
  if (!c->peer_closed && !c->closed) set_closed(c, ws::close_code::kAbnormal, {});
  if (c->recv_future) {
    Ref msg = Ref::steal(disconnect_message(c));
    if (!msg) c->h->outer->log_exception("Error building websocket.disconnect");
    resolve(c, &c->recv_future, msg ? msg.get() : N->disconnect_msg.get());
  }
  resolve(c, &c->send_future, nullptr);
}

Py_ssize_t queued(const WsCall* c) noexcept { return c->queue ? PyList_GET_SIZE(c->queue) - c->head : 0; }

// Below both bounds: the engine may read another message for this connection.
bool has_room(const WsCall* c) noexcept {
  return queued(c) < kMaxQueued && c->queued_bytes < kMaxQueuedBytes;
}

// What a queued message counts against kMaxQueuedBytes: its payload's size in bytes (for text,
// the UTF-8 length CPython caches for ASCII, else the character count times the kind's width).
size_t payload_size(PyObject* payload) noexcept {
  if (PyBytes_Check(payload)) return size_t(PyBytes_GET_SIZE(payload));
  return size_t(PyUnicode_GET_LENGTH(payload)) * size_t(PyUnicode_KIND(payload));
}

// receive()
PyObject* ws_receive(PyObject* o, PyObject* const*, size_t nargsf, PyObject* kwnames) {
  auto* c = reinterpret_cast<WsCall*>(o);
  if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "receive() takes no arguments");
    return nullptr;
  }
  if (c->recv_future) {
    PyErr_SetString(PyExc_RuntimeError, "receive() called while another receive() is pending");
    return nullptr;
  }
  if (!c->connect_given) {
    c->connect_given = true;
    return make_ready(Py_NewRef(N->connect_msg.get()));
  }
  if (queued(c) > 0) {
    // Take over the list's reference; the slot keeps None until the list is emptied.
    PyObject* msg = PyList_GET_ITEM(c->queue, c->head);
    PyList_SET_ITEM(c->queue, c->head, Py_NewRef(Py_None));
    ++c->head;
    PyObject* payload = PyDict_GetItemWithError(msg, N->bytes.get());
    if (!payload && !PyErr_Occurred()) payload = PyDict_GetItemWithError(msg, N->text.get());
    PyErr_Clear();
    if (payload) c->queued_bytes -= std::min(c->queued_bytes, payload_size(payload));
    if (queued(c) == 0 || c->head >= kMaxQueued) {
      // Drop the consumed slots (the list never holds more than kMaxQueued live messages plus
      // this many spent ones, however long the queue stays non-empty).
      if (PyList_SetSlice(c->queue, 0, c->head, nullptr) < 0) PyErr_Clear();
      c->head = 0;
      if (queued(c) == 0) c->queued_bytes = 0;
    }
    if (!c->reading && c->ex && !c->peer_closed && !c->closed && has_room(c)) {
      c->reading = true;
      c->ex->ws_want(true);  // room again
    }
    return make_ready(msg);
  }
  if (c->peer_closed || c->closed || !c->ex) {
    PyObject* msg = disconnect_message(c);
    return msg ? make_ready(msg) : nullptr;
  }
  if (c->accepted && !c->reading) {
    c->reading = true;
    c->ex->ws_want(true);
  }
  PyObject* fut = PyObject_CallNoArgs(c->h->create_future.get());
  if (!fut) return nullptr;
  c->recv_future = Py_NewRef(fut);
  return fut;
}

PyObject* protocol_error(const char* fmt, PyObject* type) {
  PyErr_Format(PyExc_RuntimeError, fmt, type);
  return nullptr;
}

PyObject* client_disconnected_type = nullptr;  // fulmen._core.ClientDisconnected; lives as long as the module

PyObject* client_disconnected() {
  PyErr_SetString(client_disconnected_type, "the WebSocket connection is closed");
  return nullptr;
}

// Looks up key in msg: borrowed, or null (absent, or an error is set: check PyErr_Occurred).
PyObject* get(PyObject* msg, const Ref& key) noexcept { return PyDict_GetItemWithError(msg, key.get()); }

// The future a send() waits on while the socket drains (new reference). Sends from several tasks
// at once (a broadcaster and a reader, gather()) all wait on the same one: every one of them
// completes when the queue drained.
PyObject* drain_future(WsCall* c) {
  if (!c->send_future) {
    c->send_future = PyObject_CallNoArgs(c->h->create_future.get());
    if (!c->send_future) return nullptr;
  }
  return Py_NewRef(c->send_future);
}

PyObject* send_accept(WsCall* c, PyObject* msg) {
  PyObject* proto = get(msg, N->subprotocol);
  if (!proto && PyErr_Occurred()) return nullptr;
  std::string_view sub;
  if (proto && proto != Py_None) {
    if (!PyUnicode_Check(proto)) {
      PyErr_Format(PyExc_TypeError, "websocket.accept 'subprotocol' must be a str, not %.100s", Py_TYPE(proto)->tp_name);
      return nullptr;
    }
    Py_ssize_t n;
    const char* p = PyUnicode_AsUTF8AndSize(proto, &n);
    if (!p) return nullptr;
    sub = std::string_view(p, size_t(n));
  }
  PyObject* headers = get(msg, N->headers);
  if (!headers && PyErr_Occurred()) return nullptr;
  Ref seq;
  std::vector<http1::Header>& hs = c->h->resp_headers;
  if (!parse_headers(headers, &seq, hs, nullptr)) return nullptr;
  if (c->peer_closed || !c->ex) return client_disconnected();
  switch (c->ex->ws_accept(sub, hs.data(), hs.size())) {
    case Exchange::StartError::kNone:
      break;
    case Exchange::StartError::kBadHeader:
      PyErr_SetString(PyExc_RuntimeError,
                      "websocket.accept: invalid subprotocol (not a token) or header (bad name, CR/LF/NUL in a value)");
      return nullptr;
    default:
      PyErr_SetString(PyExc_RuntimeError, "websocket.accept: the handshake was already answered");
      return nullptr;
  }
  c->accepted = true;
  c->reading = true;
  c->ex->ws_want(true);  // read ahead (bounded) so pings and the client's close are answered
  return ready_none();
}

PyObject* send_message(WsCall* c, PyObject* msg) {
  PyObject* data = get(msg, N->bytes);
  if (!data && PyErr_Occurred()) return nullptr;
  bool binary = data && data != Py_None;
  PyObject* text = get(msg, N->text);
  if (!text && PyErr_Occurred()) return nullptr;
  bool has_text = text && text != Py_None;
  if (binary == has_text) {
    // The ASGI spec: exactly one of them is not None.
    PyErr_SetString(PyExc_TypeError, binary ? "websocket.send takes 'bytes' or 'text', not both"
                                            : "websocket.send needs 'bytes' or 'text'");
    return nullptr;
  }
  if (!binary) data = text;
  if (c->peer_closed || !c->ex) return client_disconnected();
  Exchange::WriteStatus st;
  if (binary) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "websocket.send 'bytes' must be bytes, not %.100s", Py_TYPE(data)->tp_name);
      return nullptr;
    }
    st = c->ex->ws_send(true, static_cast<const char*>(view.buf), size_t(view.len));
    PyBuffer_Release(&view);
  } else {
    if (!PyUnicode_Check(data)) {
      PyErr_Format(PyExc_TypeError, "websocket.send 'text' must be a str, not %.100s", Py_TYPE(data)->tp_name);
      return nullptr;
    }
    Py_ssize_t n;
    const char* p = PyUnicode_AsUTF8AndSize(data, &n);
    if (!p) return nullptr;
    st = c->ex->ws_send(false, p, size_t(n));
  }
  if (st == Exchange::WriteStatus::kError) {
    if (!c->peer_closed) set_closed(c, ws::close_code::kAbnormal, {});
    return client_disconnected();
  }
  if (st == Exchange::WriteStatus::kPause) return drain_future(c);
  return ready_none();
}

PyObject* send_close(WsCall* c, PyObject* msg) {
  PyObject* code_obj = get(msg, N->code);
  if (!code_obj && PyErr_Occurred()) return nullptr;
  long code = ws::close_code::kNormal;
  if (code_obj && code_obj != Py_None) {
    if (!PyLong_Check(code_obj)) {
      PyErr_Format(PyExc_TypeError, "websocket.close 'code' must be an int, not %.100s", Py_TYPE(code_obj)->tp_name);
      return nullptr;
    }
    code = PyLong_AsLong(code_obj);
    if (code == -1 && PyErr_Occurred()) return nullptr;
  }
  PyObject* reason_obj = get(msg, N->reason);
  if (!reason_obj && PyErr_Occurred()) return nullptr;
  std::string_view reason;
  if (reason_obj && reason_obj != Py_None) {
    if (!PyUnicode_Check(reason_obj)) {
      PyErr_Format(PyExc_TypeError, "websocket.close 'reason' must be a str, not %.100s", Py_TYPE(reason_obj)->tp_name);
      return nullptr;
    }
    Py_ssize_t n;
    const char* p = PyUnicode_AsUTF8AndSize(reason_obj, &n);
    if (!p) return nullptr;
    reason = std::string_view(p, size_t(n));
  }
  if (!c->accepted) {
    // Closing before accepting denies the handshake: HTTP 403 (the ASGI spec).
    c->closed = true;
    c->close_code = int(code);
    if (c->ex) {
      if (c->peer_closed) c->ex->abort();  // nobody to answer: just close
      else c->ex->send_simple(403, "", true);
    }
    detach(c);
    return ready_none();
  }
  if (code < 0 || code > 0xFFFF || !ws::close_code_valid(uint16_t(code))) {
    PyErr_Format(PyExc_ValueError, "websocket.close: %ld is not a close code an endpoint may send "
                 "(1000-1003, 1007-1014, 3000-4999)", code);
    return nullptr;
  }
  c->closed = true;
  c->close_code = int(code);
  Py_XSETREF(c->close_reason, reason_obj && reason_obj != Py_None ? Py_NewRef(reason_obj) : nullptr);
  if (c->ex && !c->peer_closed) c->ex->ws_close(uint16_t(code), reason);
  return ready_none();
}

// websocket.http.response.start / .body: the denial response extension.
PyObject* send_response(WsCall* c, PyObject* msg, bool start) {
  if (start) {
    PyObject* status = get(msg, N->status);
    if (!status || !PyLong_Check(status)) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "websocket.http.response.start needs an int 'status'");
      return nullptr;
    }
    long code = PyLong_AsLong(status);
    if (code == -1 && PyErr_Occurred()) return nullptr;
    PyObject* headers = get(msg, N->headers);
    if (!headers && PyErr_Occurred()) return nullptr;
    Ref seq;
    std::vector<http1::Header>& hs = c->h->resp_headers;
    if (!parse_headers(headers, &seq, hs, nullptr)) return nullptr;
    if (code < 200 || code > 999) {
      PyErr_Format(PyExc_RuntimeError, "invalid HTTP status %ld in websocket.http.response.start", code);
      return nullptr;
    }
    c->response_started = true;
    if (!c->ex || c->peer_closed) return ready_none();
    if (c->ex->start_response(int(code), {}, hs.data(), hs.size()) != Exchange::StartError::kNone) {
      PyErr_SetString(PyExc_RuntimeError,
                      "invalid response header: bad name, CR/LF/NUL in a value, or a bad Content-Length");
      return nullptr;
    }
    return ready_none();
  }
  PyObject* body = get(msg, N->body);
  if (!body && PyErr_Occurred()) return nullptr;
  PyObject* more = get(msg, N->more_body);
  if (!more && PyErr_Occurred()) return nullptr;
  int more_body = more ? PyObject_IsTrue(more) : 0;
  if (more_body < 0) return nullptr;
  Exchange::WriteStatus st = Exchange::WriteStatus::kOk;
  if (body && body != Py_None) {
    Py_buffer view;
    if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "websocket.http.response.body 'body' must be bytes, not %.100s", Py_TYPE(body)->tp_name);
      return nullptr;
    }
    if (c->ex && !c->peer_closed && view.len > 0)
      st = c->ex->write(static_cast<const char*>(view.buf), size_t(view.len));
    PyBuffer_Release(&view);
  }
  if (!more_body) {
    c->closed = true;
    if (c->ex) {
      if (st == Exchange::WriteStatus::kError || c->peer_closed) c->ex->abort();
      else c->ex->finish();
    }
    detach(c);
    return ready_none();
  }
  if (st == Exchange::WriteStatus::kPause && c->ex) return drain_future(c);
  return ready_none();
}

bool is(PyObject* type, const Ref& name) noexcept {
  return PyUnicode_Check(type) && PyUnicode_Compare(type, name.get()) == 0;
}

// send(message)
PyObject* ws_send(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  WsCall* c = reinterpret_cast<WsSend*>(o)->call;
  if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "send() takes exactly one argument (the message dict)");
    return nullptr;
  }
  PyObject* msg = args[0];
  if (!PyDict_Check(msg)) {
    PyErr_Format(PyExc_TypeError, "ASGI message must be a dict, not %.100s", Py_TYPE(msg)->tp_name);
    return nullptr;
  }
  PyObject* type = get(msg, N->type);
  if (!type) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "ASGI message has no 'type'");
    return nullptr;
  }
  if (is(type, N->websocket_send)) {
    if (c->closed && c->accepted)
      return protocol_error("Unexpected ASGI message '%S', after sending 'websocket.close'.", type);
    if (!c->accepted)
      return protocol_error("Expected ASGI message 'websocket.accept', 'websocket.close' or "
                            "'websocket.http.response.start', but got '%S'.", type);
    return send_message(c, msg);
  }
  if (is(type, N->websocket_accept)) {
    if (c->accepted || c->closed || c->response_started)
      return protocol_error("Unexpected ASGI message '%S': the handshake was already answered.", type);
    return send_accept(c, msg);
  }
  if (is(type, N->websocket_close)) {
    if (c->closed) return protocol_error("Unexpected ASGI message '%S', after sending 'websocket.close'.", type);
    if (c->response_started)
      return protocol_error("Expected ASGI message 'websocket.http.response.body', but got '%S'.", type);
    return send_close(c, msg);
  }
  if (is(type, N->websocket_http_response_start)) {
    if (c->accepted || c->closed || c->response_started)
      return protocol_error("Unexpected ASGI message '%S': the handshake was already answered.", type);
    return send_response(c, msg, true);
  }
  if (is(type, N->websocket_http_response_body)) {
    if (!c->response_started || c->closed)
      return protocol_error("Unexpected ASGI message '%S': no denial response is in progress.", type);
    return send_response(c, msg, false);
  }
  return protocol_error("Unexpected ASGI message '%S' sent, for a WebSocket connection.", type);
}

// call.app_done() / call.app_error(exc): from the run helper when the app's coroutine ended.
PyObject* ws_app_done(PyObject* o, PyObject*) {
  auto* c = reinterpret_cast<WsCall*>(o);
  Py_CLEAR(c->task);
  if (c->ex) {
    if (c->accepted) {
      c->ex->finish();  // closes with 1000 unless closed already
    } else if (c->response_started) {
      c->h->outer->log_message("ASGI callable returned without completing the denial response.");
      c->ex->abort();
    } else if (!c->peer_closed) {
      c->h->outer->log_message("ASGI callable returned without sending handshake.");
      c->ex->send_simple(500, "Internal Server Error\n", true);
    } else {
      c->ex->abort();
    }
  }
  detach(c);
  Py_RETURN_NONE;
}

PyObject* ws_app_error(PyObject* o, PyObject* exc) {
  auto* c = reinterpret_cast<WsCall*>(o);
  Py_CLEAR(c->task);
  if (PyObject_IsInstance(exc, PyExc_Exception) == 1) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
    c->h->outer->log_exception("Exception in ASGI application");
  }
  if (c->ex) {
    if (c->accepted) {
      // The client learns the app failed: 1011 (Internal Error) rather than a bare TCP close.
      if (!c->closed && !c->peer_closed) c->ex->ws_close(ws::close_code::kInternalError, {});
      c->ex->finish();
    } else if (!c->response_started && !c->peer_closed) {
      c->ex->send_simple(500, "Internal Server Error\n", true);
    } else {
      c->ex->abort();
    }
  }
  detach(c);
  Py_RETURN_NONE;
}

PyMethodDef wscall_methods[] = {
    {"app_done", ws_app_done, METH_NOARGS, nullptr},
    {"app_error", ws_app_error, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr}};

WsCall* call_of(Exchange& ex) noexcept { return static_cast<WsCall*>(ex.app_state); }

}  // namespace

bool ws_init_names(Names* n) noexcept {
#define K(f, s) n->f = Ref::steal(PyUnicode_InternFromString(s))
  K(websocket, "websocket"); K(ws, "ws"); K(subprotocols, "subprotocols"); K(subprotocol, "subprotocol");
  K(text, "text"); K(bytes, "bytes"); K(code, "code"); K(reason, "reason");
  K(websocket_connect, "websocket.connect"); K(websocket_accept, "websocket.accept");
  K(websocket_receive, "websocket.receive"); K(websocket_send, "websocket.send");
  K(websocket_close, "websocket.close"); K(websocket_disconnect, "websocket.disconnect");
  K(websocket_http_response_start, "websocket.http.response.start");
  K(websocket_http_response_body, "websocket.http.response.body");
  K(websocket_http_response, "websocket.http.response");
#undef K
  n->connect_msg = Ref::steal(PyDict_New());
  if (PyErr_Occurred() || !n->connect_msg) return false;
  Ref type = Ref::steal(PyUnicode_InternFromString("type"));
  return type && PyDict_SetItem(n->connect_msg.get(), type.get(), n->websocket_connect.get()) == 0;
}

bool is_ws_call(void* app_state) noexcept {
  return app_state && Py_TYPE(static_cast<PyObject*>(app_state)) == &WsCallType;
}

bool ws_attach(AsgiHandler::Impl& im) noexcept {
  // Keys in the order Uvicorn gives them; constants filled in, the rest set per connection.
  Ref d = Ref::steal(PyDict_New());
  if (!d) return false;
  PyObject* keys[] = {N->type.get(), N->asgi.get(), N->http_version.get(), N->scheme.get(),
                      N->path.get(), N->raw_path.get(), N->query_string.get(), N->root_path.get(),
                      N->headers.get(), N->client.get(), N->server.get(), N->subprotocols.get(),
                      N->state.get(), N->extensions.get()};
  for (PyObject* k : keys) {
    if (k == N->state.get() && !im.state) continue;
    PyObject* v = Py_None;
    if (k == N->type.get()) v = N->websocket.get();
    else if (k == N->scheme.get()) v = N->ws.get();
    else if (k == N->http_version.get()) v = N->v1_1.get();  // RFC 6455: the handshake is HTTP/1.1
    else if (k == N->asgi.get()) v = N->asgi_info.get();
    else if (k == N->root_path.get()) v = im.root_path_str.get();
    if (PyDict_SetItem(d.get(), k, v) < 0) return false;
  }
  im.ws_scope_proto = std::move(d);
  return true;
}

}  // namespace asgi

PyObject* AsgiHandler::Impl::build_ws_scope(Exchange& ex) noexcept {
  Ref scope = Ref::steal(PyDict_Copy(ws_scope_proto.get()));
  if (!scope || !fill_request(scope.get(), ex)) return nullptr;
  size_t n = ex.ws_subprotocols(ws_protocols, std::size(ws_protocols));
  Ref protos = Ref::steal(PyList_New(Py_ssize_t(n)));
  if (!protos) return nullptr;
  for (size_t i = 0; i < n; ++i) {
    PyObject* p = PyUnicode_DecodeLatin1(ws_protocols[i].data(), Py_ssize_t(ws_protocols[i].size()), nullptr);
    if (!p) return nullptr;
    PyList_SET_ITEM(protos.get(), Py_ssize_t(i), p);
  }
  if (PyDict_SetItem(scope.get(), asgi::N->subprotocols.get(), protos.get()) < 0) return nullptr;
  // A fresh dict per connection: an app may write to its scope.
  Ref ext = Ref::steal(Py_BuildValue("{s{}}", "websocket.http.response"));
  if (!ext || PyDict_SetItem(scope.get(), asgi::N->extensions.get(), ext.get()) < 0) return nullptr;
  return scope.release();
}

namespace asgi {


void ws_on_request(AsgiHandler::Impl& im, Exchange& ex) noexcept {
  auto* c = PyObject_New(WsCall, &WsCallType);
  if (!c) {
    im.outer->log_exception("Out of memory starting an ASGI WebSocket");
    ex.send_simple(500, "Internal Server Error\n", true);
    return;
  }
  c->vectorcall = ws_receive;
  c->h = &im;
  c->ex = &ex;
  c->recv_future = c->send_future = c->task = c->queue = c->close_reason = nullptr;
  c->head = 0;
  c->queued_bytes = 0;
  c->close_code = ws::close_code::kNormal;
  c->connect_given = c->accepted = c->response_started = c->closed = c->peer_closed = c->reading = false;
  ex.app_state = c;  // the exchange holds this reference until detach()
  Ref send;
  if (auto* s = PyObject_New(WsSend, &WsSendType)) {
    s->vectorcall = ws_send;
    s->call = reinterpret_cast<WsCall*>(Py_NewRef(reinterpret_cast<PyObject*>(c)));
    send = Ref::steal(reinterpret_cast<PyObject*>(s));
  }
  Ref scope = send ? Ref::steal(im.build_ws_scope(ex)) : Ref();
  Ref coro;
  if (scope) {
    PyObject* args[5] = {im.app.get(), scope.get(), reinterpret_cast<PyObject*>(c), send.get(),
                         reinterpret_cast<PyObject*>(c)};
    coro = Ref::steal(PyObject_Vectorcall(N->run_helper.get(), args, 5, nullptr));
  }
  if (coro) {
    Ref c_ref = Ref::borrow(reinterpret_cast<PyObject*>(c));  // the task may finish eagerly
    Ref task = Ref::steal(im.start_task(coro.get()));
    if (task && c->ex && !c->task) c->task = task.release();  // still running: keep it alive
    if (task || c->task) return;
  }
  if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
    im.outer->set_fatal();
  } else {
    im.outer->log_exception("Exception in ASGI application");
  }
  if (c->ex) {
    ex.send_simple(500, "Internal Server Error\n", true);
    detach(c);
  }
}

namespace {

// Hands `payload` (bytes or str; null if making it failed, with the Python error set) to the
// app: to its waiting receive(), else to the read-ahead queue.
void deliver(AsgiHandler::Impl& im, Exchange& ex, WsCall* c, bool binary, Ref payload) noexcept {
  Ref msg = payload ? Ref::steal(PyDict_New()) : Ref();
  if (!msg || PyDict_SetItem(msg.get(), N->type.get(), N->websocket_receive.get()) < 0 ||
      PyDict_SetItem(msg.get(), binary ? N->bytes.get() : N->text.get(), payload.get()) < 0) {
    im.outer->log_exception("Error delivering a WebSocket message");
    ex.ws_close(ws::close_code::kInternalError, {});
    set_closed(c, ws::close_code::kInternalError, {});
    Ref bye = Ref::steal(disconnect_message(c));
    if (!bye) PyErr_Clear();
    resolve(c, &c->recv_future, bye ? bye.get() : N->disconnect_msg.get());
    return;
  }
  if (c->recv_future) {
    resolve(c, &c->recv_future, msg.get());
    return;
  }
  if ((!c->queue && !(c->queue = PyList_New(0))) || PyList_Append(c->queue, msg.get()) < 0) {
    // Out of memory: the message cannot be kept, so the connection cannot go on correctly.
    im.outer->log_exception("Error queueing a WebSocket message");
    ex.ws_close(ws::close_code::kInternalError, {});
    set_closed(c, ws::close_code::kInternalError, {});
    return;
  }
  c->queued_bytes += payload_size(payload.get());
  if (!has_room(c)) {
    c->reading = false;
    ex.ws_want(false);  // the app is behind: let TCP hold the client back
  }
}

}  // namespace

void ws_on_message(AsgiHandler::Impl& im, Exchange& ex, bool binary, std::string_view data) noexcept {
  WsCall* c = call_of(ex);
  if (!c) return;
  Ref keep = Ref::borrow(reinterpret_cast<PyObject*>(c));  // Python may run inside resolve()
  deliver(im, ex, c, binary,
          Ref::steal(binary ? PyBytes_FromStringAndSize(data.data(), Py_ssize_t(data.size()))
                            : PyUnicode_DecodeUTF8(data.data(), Py_ssize_t(data.size()), nullptr)));
}

void ws_on_masked_message(AsgiHandler::Impl& im, Exchange& ex, const char* data, size_t n,
                          const uint8_t key[4], size_t phase) noexcept {
  WsCall* c = call_of(ex);
  if (!c) return;
  Ref keep = Ref::borrow(reinterpret_cast<PyObject*>(c));
  // The app's bytes object is filled straight from the read buffer, unmasking on the way.
  Ref payload = Ref::steal(PyBytes_FromStringAndSize(nullptr, Py_ssize_t(n)));
  if (payload) ws::copy_unmasked(PyBytes_AS_STRING(payload.get()), data, n, key, phase);
  deliver(im, ex, c, true, std::move(payload));
}

void ws_on_closed(AsgiHandler::Impl& im, Exchange& ex, uint16_t code, std::string_view reason) noexcept {
  WsCall* c = call_of(ex);
  if (!c) return;
  Ref keep = Ref::borrow(reinterpret_cast<PyObject*>(c));  // Python may run inside resolve()
  set_closed(c, code, reason);
  c->reading = false;
  if (c->recv_future && queued(c) == 0) {
    Ref msg = Ref::steal(disconnect_message(c));
    if (!msg) im.outer->log_exception("Error building websocket.disconnect");
    resolve(c, &c->recv_future, msg ? msg.get() : N->disconnect_msg.get());
  }
  resolve(c, &c->send_future, nullptr);
}

void ws_on_disconnect(AsgiHandler::Impl& im, Exchange& ex) noexcept {
  // Before the handshake was answered, the client went away.
  ws_on_closed(im, ex, ws::close_code::kAbnormal, {});
}

void ws_on_resume(AsgiHandler::Impl& im, Exchange& ex) noexcept {
  if (WsCall* c = call_of(ex)) resolve(c, &c->send_future, nullptr);
}

void ws_on_abort(AsgiHandler::Impl& im, Exchange& ex) noexcept {
  if (WsCall* c = call_of(ex)) detach(c);
}

bool ws_init_types(PyObject* module) noexcept {
  init_callable_type<WsCall>(WsCallType, "fulmen._core.WebSocketReceive", wscall_dealloc,
                             "The receive() callable of one ASGI WebSocket connection", wscall_methods);
  init_callable_type<WsSend>(WsSendType, "fulmen._core.WebSocketSend", wssend_dealloc,
                             "The send() callable of one ASGI WebSocket connection");
  if (PyType_Ready(&WsCallType) < 0 || PyType_Ready(&WsSendType) < 0) return false;
  // What send() raises once the connection is gone: an OSError, as Uvicorn's ClientDisconnected,
  // which Starlette turns into WebSocketDisconnect.
  Ref exc = Ref::steal(PyErr_NewExceptionWithDoc(
      "fulmen._core.ClientDisconnected",
      "send() on an ASGI WebSocket connection that is closed or was lost.", PyExc_OSError, nullptr));
  if (!exc) return false;
  client_disconnected_type = Py_NewRef(exc.get());  // a raw pointer: see ready_none in asgi.cpp
  return PyModule_AddObjectRef(module, "ClientDisconnected", exc.get()) == 0;
}

}  // namespace asgi
}  // namespace fulmen::bridge
