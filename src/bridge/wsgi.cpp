// WSGI bridge; see wsgi.hpp.
//
// Per request the hot path is: copy a prepared environ prototype (one per listener), add the
// per-request keys (interned once, header keys through a small cache), call the app, and write
// the bytes it returns straight from the PyBytes buffers. The start_response, write and
// wsgi.input objects are reused across requests whenever the app kept no reference to them.
#include "bridge/wsgi.hpp"
#include "bridge/py_types.hpp"

#include <sys/stat.h>

#include <cstring>

#include "core/base/ascii.hpp"

namespace fulmen::bridge {

using http1::Exchange;

namespace {

// ---- interned strings ---------------------------------------------------------------------------

struct Strings {
  Ref REQUEST_METHOD, SCRIPT_NAME, PATH_INFO, QUERY_STRING, CONTENT_TYPE, CONTENT_LENGTH,
      SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL, REMOTE_ADDR, REMOTE_PORT, RAW_URI, HTTP_HOST,
      wsgi_version, wsgi_url_scheme, wsgi_input, wsgi_errors, wsgi_multithread,
      wsgi_multiprocess, wsgi_run_once, wsgi_input_terminated, wsgi_file_wrapper;
  Ref HTTP_1_1, HTTP_1_0, empty, close;
  Ref http, https;  // wsgi.url_scheme values from --proxy-headers
  Ref methods[10];  // by http1::Method
};
Strings* S = nullptr;  // created once at module init, never freed (module lifetime)

Ref intern(const char* s) noexcept { return Ref::steal(PyUnicode_InternFromString(s)); }

bool init_strings() noexcept {
  if (S) return true;
  auto* s = new Strings();
#define K(name) s->name = intern(#name)
  K(REQUEST_METHOD); K(SCRIPT_NAME); K(PATH_INFO); K(QUERY_STRING); K(CONTENT_TYPE);
  K(CONTENT_LENGTH); K(SERVER_NAME); K(SERVER_PORT); K(SERVER_PROTOCOL); K(REMOTE_ADDR);
  K(REMOTE_PORT); K(RAW_URI); K(HTTP_HOST);
#undef K
  s->http = intern("http");
  s->https = intern("https");
  s->wsgi_version = intern("wsgi.version");
  s->wsgi_url_scheme = intern("wsgi.url_scheme");
  s->wsgi_input = intern("wsgi.input");
  s->wsgi_errors = intern("wsgi.errors");
  s->wsgi_multithread = intern("wsgi.multithread");
  s->wsgi_multiprocess = intern("wsgi.multiprocess");
  s->wsgi_run_once = intern("wsgi.run_once");
  s->wsgi_input_terminated = intern("wsgi.input_terminated");
  s->wsgi_file_wrapper = intern("wsgi.file_wrapper");
  s->HTTP_1_1 = intern("HTTP/1.1");
  s->HTTP_1_0 = intern("HTTP/1.0");
  s->empty = intern("");
  s->close = intern("close");
  const char* names[10] = {nullptr, "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                           "CONNECT", "TRACE"};
  for (int i = 1; i < 10; ++i) s->methods[i] = intern(names[i]);
  if (PyErr_Occurred()) {
    delete s;
    return false;
  }
  S = s;
  return true;
}

PyObject* latin1(std::string_view v) noexcept {
  return PyUnicode_DecodeLatin1(v.data(), Py_ssize_t(v.size()), nullptr);
}

// Set an item, stealing the value reference. Returns false with an error set.
bool set_steal(PyObject* d, PyObject* key, PyObject* value) noexcept {
  if (!value) return false;
  int r = PyDict_SetItem(d, key, value);
  Py_DECREF(value);
  return r == 0;
}

// ---- HTTP_* key cache ---------------------------------------------------------------------------

// Maps a header name (any case) to its interned "HTTP_UPPER_NAME" key without allocating: an
// open-addressing table filled on first sight, bounded so hostile names cannot grow it.
class HeaderKeyCache {
 public:
  ~HeaderKeyCache() {
    for (auto& e : slots_) Py_XDECREF(e.key);
  }
  // New reference, or null with an error set.
  PyObject* get(std::string_view name) noexcept {
    char key[5 + kMaxName];
    size_t n = name.size();
    if (n > kMaxName) return make(name);
    uint32_t h = 2166136261u;
    for (char c : name) h = (h ^ uint8_t(base::ascii_lower(c))) * 16777619u;
    for (size_t probe = 0; probe < kSlots; ++probe) {
      Entry& e = slots_[(h + probe) & (kSlots - 1)];
      if (!e.key) {
        if (used_ >= kSlots / 2) return make(name);
        PyObject* k = make(name);
        if (!k) return nullptr;
        for (size_t i = 0; i < n; ++i) e.name[i] = base::ascii_lower(name[i]);
        e.len = uint8_t(n);
        e.hash = h;
        Py_INCREF(k);
        e.key = k;
        ++used_;
        return k;
      }
      if (e.hash == h && e.len == n && base::iequals(name, std::string_view(e.name, n))) {
        Py_INCREF(e.key);
        return e.key;
      }
    }
    (void)key;
    return make(name);
  }

 private:
  static constexpr size_t kMaxName = 48;
  static constexpr size_t kSlots = 256;
  struct Entry {
    PyObject* key = nullptr;  // owned
    uint32_t hash = 0;
    uint8_t len = 0;
    char name[kMaxName];
  };
  static PyObject* make(std::string_view name) noexcept {
    std::string k = "HTTP_";
    k.reserve(5 + name.size());
    for (char c : name) k.push_back(c == '-' ? '_' : (c >= 'a' && c <= 'z') ? char(c - 32) : c);
    PyObject* o = PyUnicode_DecodeLatin1(k.data(), Py_ssize_t(k.size()), nullptr);
    if (o) PyUnicode_InternInPlace(&o);
    return o;
  }
  Entry slots_[kSlots];
  size_t used_ = 0;
};

// ---- Python types -------------------------------------------------------------------------------

struct StartResponseObject;

struct InputObject {
  PyObject_HEAD
  Exchange* ex;  // borrowed; null once the request is over (reads then return b"")
};

struct WriteObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  StartResponseObject* sr;  // owned
};

struct FileWrapperObject {
  PyObject_HEAD
  PyObject* filelike;  // owned
  Py_ssize_t blksize;
};

struct StartResponseObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  WsgiHandler::Impl* h;  // borrowed; the handler outlives every request
  Exchange* ex;          // borrowed; null once the request is over
  PyObject* status;      // owned: the status str from start_response
  PyObject* headers;     // owned: the header list from start_response
  PyObject* result;      // owned: what the app returned, until close() was called
  PyObject* iter;        // owned: its iterator while a response is paused
  PyObject* input;       // owned: this request's wsgi.input, detached when the request ends
  Py_ssize_t index;      // next item when result is an exact list or tuple
  bool headers_sent;     // PEP 3333: headers go out with the first non-empty body chunk
  bool file_sent;        // the wsgi.file_wrapper fast path has run
};

PyObject* sr_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames);
PyObject* write_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames);

PyTypeObject InputType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject WriteType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject FileWrapperType = {PyVarObject_HEAD_INIT(nullptr, 0)};
PyTypeObject StartResponseType = {PyVarObject_HEAD_INIT(nullptr, 0)};

}  // namespace

// ---- the handler state --------------------------------------------------------------------------

struct WsgiHandler::Impl {
  WsgiHandler* outer = nullptr;
  Ref app;
  std::vector<Ref> protos;   // per listener: the environ prototype
  std::string root_path;
  HeaderKeyCache header_keys;
  std::string scratch;       // percent-decoding and read() accumulation
  std::vector<http1::Header> resp_headers;  // views into the app's header strs
  std::string last_addr_text;  // REMOTE_ADDR of the previous request, and its str
  Ref last_addr;
  Ref cached_sr, cached_input, cached_write;  // reused when nobody else holds them

  StartResponseObject* take_sr(Exchange* ex) noexcept;
  InputObject* take_input(Exchange* ex) noexcept;
  PyObject* take_write(StartResponseObject* sr) noexcept;
  PyObject* build_environ(Exchange& ex, PyObject* input) noexcept;
  bool send_headers(StartResponseObject* sr) noexcept;
  // Runs (or resumes) the response loop; returns when it finished or paused.
  void drive(StartResponseObject* sr) noexcept;
  void fail(StartResponseObject* sr) noexcept;
  void finish_call(StartResponseObject* sr) noexcept;
  void close_result(StartResponseObject* sr) noexcept;
};

namespace {

// ---- wsgi.input ---------------------------------------------------------------------------------

PyObject* body_error(Exchange* ex) {
  const char* what = "request body unavailable";
  switch (ex->body_error()) {
    case Exchange::BodyError::kMalformed: what = "malformed request body"; break;
    case Exchange::BodyError::kTooLarge: what = "request body too large"; break;
    case Exchange::BodyError::kDisconnected: what = "client disconnected before the request body was complete"; break;
    case Exchange::BodyError::kTimeout: what = "timed out reading the request body"; break;
    default: break;
  }
  PyErr_SetString(PyExc_OSError, what);
  return nullptr;
}

// Reads up to `limit` bytes (limit < 0: all), stopping after '\n' when `line`.
PyObject* input_read_impl(InputObject* self, Py_ssize_t limit, bool line) {
  Exchange* ex = self->ex;
  if (!ex || limit == 0) return PyBytes_FromStringAndSize(nullptr, 0);
  std::string_view data;
  // Fast path: the first buffered span already satisfies the request.
  Exchange::BodyStatus st = ex->body_peek(&data, true);
  if (st == Exchange::BodyStatus::kEof) return PyBytes_FromStringAndSize(nullptr, 0);
  if (st != Exchange::BodyStatus::kData) return body_error(ex);
  size_t want = limit < 0 ? SIZE_MAX : size_t(limit);
  size_t take = std::min(want, data.size());
  if (line) {
    const void* nl = memchr(data.data(), '\n', take);
    if (nl) take = size_t(static_cast<const char*>(nl) - data.data()) + 1;
  }
  if (take == want || (line && take > 0 && data[take - 1] == '\n')) {
    PyObject* r = PyBytes_FromStringAndSize(data.data(), Py_ssize_t(take));
    if (r) ex->body_consume(take);
    return r;
  }
  std::string buf;
  for (;;) {
    buf.append(data.data(), take);
    ex->body_consume(take);
    if (buf.size() >= want || (line && !buf.empty() && buf.back() == '\n')) break;
    st = ex->body_peek(&data, true);
    if (st == Exchange::BodyStatus::kEof) break;
    if (st != Exchange::BodyStatus::kData) return body_error(ex);
    take = std::min(want - buf.size(), data.size());
    if (line) {
      const void* nl = memchr(data.data(), '\n', take);
      if (nl) take = size_t(static_cast<const char*>(nl) - data.data()) + 1;
    }
  }
  return PyBytes_FromStringAndSize(buf.data(), Py_ssize_t(buf.size()));
}

bool size_arg(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t* out) {
  *out = -1;
  if (nargs > 1) {
    PyErr_SetString(PyExc_TypeError, "expected at most one argument");
    return false;
  }
  if (nargs == 1 && args[0] != Py_None) {
    *out = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (*out == -1 && PyErr_Occurred()) return false;
  }
  return true;
}

PyObject* input_read(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  Py_ssize_t n;
  if (!size_arg(args, nargs, &n)) return nullptr;
  return input_read_impl(reinterpret_cast<InputObject*>(self), n, false);
}

PyObject* input_readline(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  Py_ssize_t n;
  if (!size_arg(args, nargs, &n)) return nullptr;
  return input_read_impl(reinterpret_cast<InputObject*>(self), n, true);
}

PyObject* input_readlines(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  Py_ssize_t hint;
  if (!size_arg(args, nargs, &hint)) return nullptr;
  Ref list = Ref::steal(PyList_New(0));
  if (!list) return nullptr;
  Py_ssize_t total = 0;
  for (;;) {
    Ref line = Ref::steal(input_read_impl(reinterpret_cast<InputObject*>(self), -1, true));
    if (!line) return nullptr;
    Py_ssize_t n = PyBytes_GET_SIZE(line.get());
    if (n == 0) break;
    if (PyList_Append(list.get(), line.get()) < 0) return nullptr;
    total += n;
    if (hint > 0 && total >= hint) break;
  }
  return list.release();
}

PyObject* input_iternext(PyObject* self) {
  PyObject* line = input_read_impl(reinterpret_cast<InputObject*>(self), -1, true);
  if (line && PyBytes_GET_SIZE(line) == 0) {
    Py_DECREF(line);
    return nullptr;  // StopIteration
  }
  return line;
}

PyMethodDef input_methods[] = {
    {"read", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(input_read)), METH_FASTCALL,
     "read(size=-1) -> bytes"},
    {"readline", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(input_readline)),
     METH_FASTCALL, "readline(size=-1) -> bytes"},
    {"readlines", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(input_readlines)),
     METH_FASTCALL, "readlines(hint=-1) -> list of bytes"},
    {nullptr, nullptr, 0, nullptr}};

// ---- write() ------------------------------------------------------------------------------------

void write_dealloc(PyObject* o) {
  Py_XDECREF(reinterpret_cast<WriteObject*>(o)->sr);
  Py_TYPE(o)->tp_free(o);
}

// ---- wsgi.file_wrapper --------------------------------------------------------------------------

int filewrapper_init(PyObject* o, PyObject* args, PyObject* kw) {
  static const char* kwlist[] = {"filelike", "blksize", nullptr};
  PyObject* filelike;
  Py_ssize_t blksize = 8192;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O|n", const_cast<char**>(kwlist), &filelike, &blksize))
    return -1;
  auto* self = reinterpret_cast<FileWrapperObject*>(o);
  Py_INCREF(filelike);
  Py_XSETREF(self->filelike, filelike);
  self->blksize = blksize > 0 ? blksize : 8192;
  return 0;
}

void filewrapper_dealloc(PyObject* o) {
  Py_XDECREF(reinterpret_cast<FileWrapperObject*>(o)->filelike);
  Py_TYPE(o)->tp_free(o);
}

PyObject* filewrapper_iternext(PyObject* o) {
  auto* self = reinterpret_cast<FileWrapperObject*>(o);
  if (!self->filelike) return nullptr;
  PyObject* data = PyObject_CallMethod(self->filelike, "read", "n", self->blksize);
  if (!data) return nullptr;
  Py_ssize_t n = PyObject_Length(data);
  if (n <= 0) {
    Py_DECREF(data);
    return nullptr;  // end of file (n == 0: StopIteration) or an error (n < 0: it propagates)
  }
  return data;
}

PyObject* filewrapper_close(PyObject* o, PyObject*) {
  auto* self = reinterpret_cast<FileWrapperObject*>(o);
  if (self->filelike && PyObject_HasAttrString(self->filelike, "close")) {
    PyObject* r = PyObject_CallMethod(self->filelike, "close", nullptr);
    if (!r) return nullptr;
    Py_DECREF(r);
  }
  Py_RETURN_NONE;
}

PyMethodDef filewrapper_methods[] = {
    {"close", filewrapper_close, METH_NOARGS, "Close the wrapped file."},
    {nullptr, nullptr, 0, nullptr}};

// ---- start_response -----------------------------------------------------------------------------

void sr_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<StartResponseObject*>(o);
  Py_XDECREF(self->status);
  Py_XDECREF(self->headers);
  Py_XDECREF(self->result);
  Py_XDECREF(self->iter);
  Py_XDECREF(self->input);
  Py_TYPE(o)->tp_free(o);
}

// Validates the status line: "NNN reason", latin-1.
bool parse_status(PyObject* status, int* code, std::string_view* reason) {
  if (!PyUnicode_Check(status)) {
    PyErr_Format(PyExc_TypeError, "status must be a str, not %.100s", Py_TYPE(status)->tp_name);
    return false;
  }
  if (PyUnicode_KIND(status) != PyUnicode_1BYTE_KIND) {
    PyErr_SetString(PyExc_ValueError, "status must be latin-1");
    return false;
  }
  const char* s = reinterpret_cast<const char*>(PyUnicode_1BYTE_DATA(status));
  Py_ssize_t n = PyUnicode_GET_LENGTH(status);
  if (n < 4 || s[3] != ' ' || s[0] < '1' || s[0] > '9' || s[1] < '0' || s[1] > '9' ||
      s[2] < '0' || s[2] > '9') {
    PyErr_Format(PyExc_ValueError, "invalid status %R: expected '200 OK' form", status);
    return false;
  }
  *code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
  *reason = std::string_view(s + 4, size_t(n - 4));
  return true;
}

bool check_header_list(PyObject* headers) {
  if (!PyList_Check(headers)) {
    PyErr_Format(PyExc_TypeError, "response headers must be a list, not %.100s",
                 Py_TYPE(headers)->tp_name);
    return false;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); ++i) {
    PyObject* item = PyList_GET_ITEM(headers, i);  // borrowed
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) || !PyUnicode_Check(PyTuple_GET_ITEM(item, 1))) {
      PyErr_Format(PyExc_TypeError, "response header %R must be a (str, str) tuple", item);
      return false;
    }
  }
  return true;
}

PyObject* sr_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<StartResponseObject*>(o);
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (kwnames && PyTuple_GET_SIZE(kwnames)) {
    PyErr_SetString(PyExc_TypeError, "start_response() takes no keyword arguments");
    return nullptr;
  }
  if (nargs < 2 || nargs > 3) {
    PyErr_SetString(PyExc_TypeError, "start_response(status, headers, exc_info=None)");
    return nullptr;
  }
  PyObject* status = args[0];
  PyObject* headers = args[1];
  PyObject* exc_info = nargs == 3 ? args[2] : Py_None;
  if (!self->ex) {
    PyErr_SetString(PyExc_RuntimeError, "start_response() called after the request ended");
    return nullptr;
  }
  if (exc_info != Py_None) {
    if (self->headers_sent) {
      // PEP 3333: too late to change the response; re-raise the app's exception.
      if (!PyTuple_Check(exc_info) || PyTuple_GET_SIZE(exc_info) != 3) {
        PyErr_SetString(PyExc_TypeError, "exc_info must be a (type, value, traceback) tuple");
        return nullptr;
      }
      PyObject* t = PyTuple_GET_ITEM(exc_info, 0);
      PyObject* v = PyTuple_GET_ITEM(exc_info, 1);
      PyObject* tb = PyTuple_GET_ITEM(exc_info, 2);
      Py_INCREF(t);
      Py_INCREF(v);
      Py_INCREF(tb);
      PyErr_Restore(t, v, tb == Py_None ? nullptr : tb);
      return nullptr;
    }
  } else if (self->status) {
    PyErr_SetString(PyExc_AssertionError,
                    "start_response() called a second time without exc_info");
    return nullptr;
  }
  int code;
  std::string_view reason;
  if (!parse_status(status, &code, &reason) || !check_header_list(headers)) return nullptr;
  Py_INCREF(status);
  Py_XSETREF(self->status, status);
  Py_INCREF(headers);
  Py_XSETREF(self->headers, headers);
  return self->h->take_write(self);
}

}  // namespace

// ---- the handler --------------------------------------------------------------------------------

StartResponseObject* WsgiHandler::Impl::take_sr(Exchange* ex) noexcept {
  StartResponseObject* sr;
  if (cached_sr && Py_REFCNT(cached_sr.get()) == 1) {
    sr = reinterpret_cast<StartResponseObject*>(cached_sr.get());
    Py_INCREF(sr);
  } else {
    sr = PyObject_New(StartResponseObject, &StartResponseType);
    if (!sr) return nullptr;
    sr->vectorcall = sr_call;
    sr->status = sr->headers = sr->result = sr->iter = sr->input = nullptr;
    cached_sr = Ref::borrow(reinterpret_cast<PyObject*>(sr));
  }
  sr->h = this;
  sr->ex = ex;
  sr->index = 0;
  sr->headers_sent = false;
  sr->file_sent = false;
  return sr;
}

InputObject* WsgiHandler::Impl::take_input(Exchange* ex) noexcept {
  InputObject* in;
  if (cached_input && Py_REFCNT(cached_input.get()) == 1) {
    in = reinterpret_cast<InputObject*>(cached_input.get());
    Py_INCREF(in);
  } else {
    in = PyObject_New(InputObject, &InputType);
    if (!in) return nullptr;
    cached_input = Ref::borrow(reinterpret_cast<PyObject*>(in));
  }
  in->ex = ex;
  return in;
}

PyObject* WsgiHandler::Impl::take_write(StartResponseObject* sr) noexcept {
  WriteObject* w;
  if (cached_write && Py_REFCNT(cached_write.get()) == 1) {
    w = reinterpret_cast<WriteObject*>(cached_write.get());
    Py_INCREF(w);
  } else {
    w = PyObject_New(WriteObject, &WriteType);
    if (!w) return nullptr;
    w->vectorcall = write_call;
    w->sr = nullptr;
    cached_write = Ref::borrow(reinterpret_cast<PyObject*>(w));
  }
  Py_INCREF(sr);
  Py_XSETREF(w->sr, sr);
  return reinterpret_cast<PyObject*>(w);
}

PyObject* WsgiHandler::Impl::build_environ(Exchange& ex, PyObject* input) noexcept {
  const http1::Request& rq = ex.request();
  Ref env = Ref::steal(PyDict_Copy(protos[size_t(ex.listener_index())].get()));
  if (!env) return nullptr;
  PyObject* d = env.get();

  PyObject* method = nullptr;
  int mid = int(rq.method_id);
  if (mid > 0 && mid < 10) {
    method = S->methods[mid].get();
    Py_INCREF(method);
  } else {
    method = latin1(rq.method);
  }
  if (!set_steal(d, S->REQUEST_METHOD.get(), method)) return nullptr;

  // PATH_INFO: percent-decoded bytes as latin-1 (PEP 3333), minus the root path.
  std::string_view raw = rq.path;
  std::string& buf = scratch;
  buf.clear();
  base::append_percent_decoded(raw, buf);
  std::string_view path = buf;
  if (!root_path.empty() && path.substr(0, root_path.size()) == root_path &&
      (path.size() == root_path.size() || path[root_path.size()] == '/')) {
    path.remove_prefix(root_path.size());
  }
  if (!set_steal(d, S->PATH_INFO.get(), latin1(path))) return nullptr;
  PyObject* query = rq.query.empty() ? (Py_INCREF(S->empty.get()), S->empty.get()) : latin1(rq.query);
  if (!set_steal(d, S->QUERY_STRING.get(), query)) return nullptr;
  if (!set_steal(d, S->RAW_URI.get(), latin1(rq.target))) return nullptr;
  PyObject* proto = rq.version_minor ? S->HTTP_1_1.get() : S->HTTP_1_0.get();
  if (PyDict_SetItem(d, S->SERVER_PROTOCOL.get(), proto) < 0) return nullptr;
  if (!ex.remote_addr().empty()) {
    // Most requests come from the address before them: reuse that str.
    if (!last_addr || last_addr_text != ex.remote_addr()) {
      last_addr = Ref::steal(latin1(ex.remote_addr()));
      if (!last_addr) return nullptr;
      last_addr_text.assign(ex.remote_addr());
    }
    if (PyDict_SetItem(d, S->REMOTE_ADDR.get(), last_addr.get()) < 0) return nullptr;
    char digits[24];
    size_t nd = base::format_u64(uint64_t(ex.remote_port()), digits);
    PyObject* port = PyUnicode_New(Py_ssize_t(nd), 127);
    if (port) std::memcpy(PyUnicode_1BYTE_DATA(port), digits, nd);
    if (!set_steal(d, S->REMOTE_PORT.get(), port)) return nullptr;
  }
  if (PyDict_SetItem(d, S->wsgi_input.get(), input) < 0) return nullptr;

  for (size_t i = 0; i < rq.num_headers; ++i) {
    const http1::Header& hd = rq.headers[i];
    std::string_view name = hd.name;
    PyObject* key;
    if (name.size() == 12 && base::iequals(name, "content-type")) {
      key = S->CONTENT_TYPE.get();
      Py_INCREF(key);
    } else if (name.size() == 14 && base::iequals(name, "content-length")) {
      continue;  // set once below from the parsed value: identical duplicates must not join
    } else {
      // "X_Foo" and "X-Foo" would both become HTTP_X_FOO: drop underscores so a client cannot
      // spoof a header a proxy in front of us set (nginx and Gunicorn do the same).
      if (name.find('_') != std::string_view::npos) continue;
      key = header_keys.get(name);
      if (!key) return nullptr;
    }
    Ref k = Ref::steal(key);
    Ref value = Ref::steal(latin1(hd.value));
    if (!value) return nullptr;
    PyObject* prev = PyDict_GetItemWithError(d, k.get());  // borrowed
    if (prev) {
      bool cookie = name.size() == 6 && base::iequals(name, "cookie");
      value = Ref::steal(PyUnicode_FromFormat(cookie ? "%U; %U" : "%U,%U", prev, value.get()));
      if (!value) return nullptr;
    } else if (PyErr_Occurred()) {
      return nullptr;
    }
    if (PyDict_SetItem(d, k.get(), value.get()) < 0) return nullptr;
  }
  if (!rq.authority.empty()) {
    // Absolute-form target: its authority replaces Host (RFC 9112 section 3.2.2).
    if (!set_steal(d, S->HTTP_HOST.get(), latin1(rq.authority))) return nullptr;
  }
  if (const http1::ForwardedInfo* fw = ex.forwarded()) {
    // --proxy-headers from a trusted proxy: the engine parsed and validated them.
    auto decimal = [](int v) {
      char digits[24];
      size_t nd = base::format_u64(uint64_t(v), digits);
      PyObject* o = PyUnicode_New(Py_ssize_t(nd), 127);
      if (o) std::memcpy(PyUnicode_1BYTE_DATA(o), digits, nd);
      return o;
    };
    if (!fw->client.empty()) {
      if (!set_steal(d, S->REMOTE_ADDR.get(), latin1(fw->client)) ||
          !set_steal(d, S->REMOTE_PORT.get(), decimal(fw->client_port)))
        return nullptr;
    }
    if (!fw->scheme.empty() &&
        PyDict_SetItem(d, S->wsgi_url_scheme.get(), fw->scheme == "https" ? S->https.get() : S->http.get()) < 0)
      return nullptr;
    if (!fw->host.empty()) {
      std::string_view name = fw->server_name;
      if (name.size() >= 2 && name.front() == '[') name = name.substr(1, name.size() - 2);  // IPv6
      if (!set_steal(d, S->HTTP_HOST.get(), latin1(fw->host)) || !set_steal(d, S->SERVER_NAME.get(), latin1(name)))
        return nullptr;
    }
    if (fw->server_port >= 0 && !set_steal(d, S->SERVER_PORT.get(), decimal(fw->server_port))) return nullptr;
  }
  if (rq.body == http1::BodyKind::kLength) {
    char digits[24];
    size_t nd = base::format_u64(rq.content_length, digits);
    PyObject* cl = PyUnicode_New(Py_ssize_t(nd), 127);
    if (cl) std::memcpy(PyUnicode_1BYTE_DATA(cl), digits, nd);
    if (!set_steal(d, S->CONTENT_LENGTH.get(), cl)) return nullptr;
  }
  // Chunked: no CONTENT_LENGTH; wsgi.input_terminated tells the app to read to EOF.
  return env.release();
}

bool WsgiHandler::Impl::send_headers(StartResponseObject* sr) noexcept {
  if (sr->headers_sent) return true;
  if (!sr->status) {
    PyErr_SetString(PyExc_AssertionError, "the app returned a body before calling start_response()");
    return false;
  }
  int code;
  std::string_view reason;
  if (!parse_status(sr->status, &code, &reason)) return false;
  resp_headers.clear();
  Py_ssize_t n = PyList_GET_SIZE(sr->headers);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(sr->headers, i);  // borrowed
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
      PyErr_SetString(PyExc_TypeError, "response headers must be (str, str) tuples");
      return false;
    }
    PyObject* name = PyTuple_GET_ITEM(item, 0);
    PyObject* value = PyTuple_GET_ITEM(item, 1);
    if (!PyUnicode_Check(name) || !PyUnicode_Check(value) ||
        PyUnicode_KIND(name) != PyUnicode_1BYTE_KIND || PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND) {
      PyErr_Format(PyExc_ValueError, "response header %R must be latin-1 str values", item);
      return false;
    }
    resp_headers.push_back(
        {std::string_view(reinterpret_cast<const char*>(PyUnicode_1BYTE_DATA(name)),
                          size_t(PyUnicode_GET_LENGTH(name))),
         std::string_view(reinterpret_cast<const char*>(PyUnicode_1BYTE_DATA(value)),
                          size_t(PyUnicode_GET_LENGTH(value)))});
  }
  switch (sr->ex->start_response(code, reason, resp_headers.data(), resp_headers.size())) {
    case Exchange::StartError::kNone:
      sr->headers_sent = true;
      return true;
    case Exchange::StartError::kBadHeader:
      PyErr_Format(PyExc_ValueError,
                   "invalid response header in %R (bad name, CR/LF/NUL in a value, or a bad "
                   "Content-Length)",
                   sr->headers);
      return false;
    default:
      PyErr_Format(PyExc_ValueError, "invalid response status %R", sr->status);
      return false;
  }
}

void WsgiHandler::Impl::close_result(StartResponseObject* sr) noexcept {
  Py_CLEAR(sr->iter);
  if (!sr->result) return;
  Ref result = Ref::steal(sr->result);
  sr->result = nullptr;
  // PEP 3333: close() is always called, even after an error or a disconnect. Lists and tuples
  // (the common case) have none; asking would build an AttributeError on every request.
  if (PyList_CheckExact(result.get()) || PyTuple_CheckExact(result.get())) return;
  PyObject* close_raw = nullptr;
#if PY_VERSION_HEX >= 0x030D0000
  int found = PyObject_GetOptionalAttr(result.get(), S->close.get(), &close_raw);
#else
  int found = _PyObject_LookupAttr(result.get(), S->close.get(), &close_raw);
#endif
  Ref close = Ref::steal(close_raw);
  if (found < 0) {
    outer->log_exception("Error getting close() of the WSGI response");
    return;
  }
  if (!found) return;
  Ref r = Ref::steal(PyObject_CallNoArgs(close.get()));
  if (!r) outer->log_exception("Exception in close() of the WSGI response");
}

void WsgiHandler::Impl::finish_call(StartResponseObject* sr) noexcept {
  // Detach first: the app's close() must not write to (or read from) a finished exchange.
  Exchange* ex = sr->ex;
  sr->ex = nullptr;
  if (ex) ex->app_state = nullptr;
  if (sr->input) reinterpret_cast<InputObject*>(sr->input)->ex = nullptr;
  Py_CLEAR(sr->input);
  close_result(sr);
  Py_CLEAR(sr->status);
  Py_CLEAR(sr->headers);
  // The cached write() still points at this start_response; let go so both can be reused.
  if (cached_write && Py_REFCNT(cached_write.get()) == 1)
    Py_CLEAR(reinterpret_cast<WriteObject*>(cached_write.get())->sr);
  // The objects the app kept (rare) must not touch the exchange any more.
  Py_DECREF(sr);
}

// The app raised (pending exception). Logs it and answers with a status or a close.
void WsgiHandler::Impl::fail(StartResponseObject* sr) noexcept {
  Exchange* ex = sr->ex;
  if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) {
    // KeyboardInterrupt, SystemExit: not the app's error to log but a request to stop. Keep the
    // first one for run() to re-raise; answer this request and let the server wind down.
    outer->set_fatal();
  } else {
    outer->log_exception("Exception in WSGI application");
  }
  if (!ex->response_started()) {
    switch (ex->body_error()) {
      case Exchange::BodyError::kMalformed:
        ex->send_simple(400, "Bad Request: malformed request body\n", true);
        break;
      case Exchange::BodyError::kTooLarge:
        ex->send_simple(413, "Content Too Large: request body over the limit\n", true);
        break;
      default:
        ex->send_simple(500, "Internal Server Error\n", true);
        break;
    }
  } else {
    ex->abort();
  }
}

void WsgiHandler::Impl::drive(StartResponseObject* sr) noexcept {
  Exchange* ex = sr->ex;
  PyObject* result = sr->result;
  for (;;) {
    PyObject* item;  // borrowed for lists/tuples, owned (in owned_item) for iterators
    Ref owned_item;
    if (PyList_CheckExact(result)) {
      if (sr->index >= PyList_GET_SIZE(result)) break;
      item = PyList_GET_ITEM(result, sr->index++);
    } else if (PyTuple_CheckExact(result)) {
      if (sr->index >= PyTuple_GET_SIZE(result)) break;
      item = PyTuple_GET_ITEM(result, sr->index++);
    } else if (Py_TYPE(result) == &FileWrapperType && !sr->file_sent) {
      // wsgi.file_wrapper over a real file: sendfile(2) from its current position.
      sr->file_sent = true;
      auto* fw = reinterpret_cast<FileWrapperObject*>(result);
      Ref fileno = Ref::steal(PyObject_CallMethod(fw->filelike, "fileno", nullptr));
      int fd = fileno ? PyLong_AsLong(fileno.get()) : -1;
      struct stat st;
      if (fd < 0 || PyErr_Occurred() || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        PyErr_Clear();
        continue;  // not a regular file: iterate it instead
      }
      Ref pos = Ref::steal(PyObject_CallMethod(fw->filelike, "tell", nullptr));
      int64_t off = pos ? PyLong_AsLongLong(pos.get()) : 0;
      if (PyErr_Occurred()) {
        PyErr_Clear();
        off = 0;
      }
      if (!send_headers(sr)) return fail(sr), finish_call(sr);
      Exchange::WriteStatus ws = ex->send_file(fd, off, -1);
      if (ws == Exchange::WriteStatus::kPause) {
        sr->index = 1;  // the file is done once we resume
        return;
      }
      if (ws == Exchange::WriteStatus::kError) return ex->abort(), finish_call(sr);
      break;
    } else {
      if (Py_TYPE(result) == &FileWrapperType && sr->file_sent && sr->index == 1) break;
      if (!sr->iter) {
        sr->iter = PyObject_GetIter(result);
        if (!sr->iter) return fail(sr), finish_call(sr);
      }
      owned_item = Ref::steal(PyIter_Next(sr->iter));
      if (!owned_item) {
        if (PyErr_Occurred()) return fail(sr), finish_call(sr);
        break;
      }
      item = owned_item.get();
    }
    if (!PyBytes_Check(item)) {
      PyErr_Format(PyExc_TypeError, "the WSGI response must yield bytes, not %.100s",
                   Py_TYPE(item)->tp_name);
      return fail(sr), finish_call(sr);
    }
    Py_ssize_t n = PyBytes_GET_SIZE(item);
    if (n == 0) continue;  // PEP 3333: empty strings do not send headers
    if (!send_headers(sr)) return fail(sr), finish_call(sr);
    Exchange::WriteStatus ws = ex->write(PyBytes_AS_STRING(item), size_t(n));
    if (ws == Exchange::WriteStatus::kPause) return;  // on_resume() continues from here
    if (ws == Exchange::WriteStatus::kError) return ex->abort(), finish_call(sr);
  }
  if (!send_headers(sr)) return fail(sr), finish_call(sr);
  ex->finish();
  finish_call(sr);
}

// ---- WsgiHandler --------------------------------------------------------------------------------

std::unique_ptr<WsgiHandler> WsgiHandler::create(PyObject* app, PyObject* error_log,
                                                 const std::vector<ListenerInfo>& listeners,
                                                 const WsgiOptions& options) noexcept {
  if (!init_strings()) return nullptr;
  std::unique_ptr<WsgiHandler> h(new WsgiHandler(error_log));
  h->impl_ = std::make_unique<Impl>();
  Impl& im = *h->impl_;
  im.outer = h.get();
  im.app = Ref::borrow(app);
  im.root_path = options.root_path;
  while (!im.root_path.empty() && im.root_path.back() == '/') im.root_path.pop_back();
  im.resp_headers.reserve(32);
  Ref errors = Ref::borrow(PySys_GetObject("stderr"));  // borrowed from sys
  Ref version = Ref::steal(Py_BuildValue("(ii)", 1, 0));
  if (!version) return nullptr;
  for (const ListenerInfo& li : listeners) {
    Ref d = Ref::steal(PyDict_New());
    if (!d) return nullptr;
    PyObject* p = d.get();
    bool ok = set_steal(p, S->SCRIPT_NAME.get(), latin1(im.root_path)) &&
              set_steal(p, S->SERVER_NAME.get(), latin1(li.server_name)) &&
              set_steal(p, S->SERVER_PORT.get(), PyUnicode_FromFormat("%d", li.server_port)) &&
              PyDict_SetItem(p, S->wsgi_version.get(), version.get()) == 0 &&
              set_steal(p, S->wsgi_url_scheme.get(), latin1(options.url_scheme)) &&
              PyDict_SetItem(p, S->wsgi_errors.get(), errors ? errors.get() : Py_None) == 0 &&
              PyDict_SetItem(p, S->wsgi_multithread.get(), options.multithread ? Py_True : Py_False) == 0 &&
              PyDict_SetItem(p, S->wsgi_multiprocess.get(), options.multiprocess ? Py_True : Py_False) == 0 &&
              PyDict_SetItem(p, S->wsgi_run_once.get(), Py_False) == 0 &&
              PyDict_SetItem(p, S->wsgi_input_terminated.get(), Py_True) == 0 &&
              PyDict_SetItem(p, S->wsgi_file_wrapper.get(),
                             reinterpret_cast<PyObject*>(&FileWrapperType)) == 0;
    if (!ok) return nullptr;
    im.protos.push_back(std::move(d));
  }
  return h;
}

WsgiHandler::WsgiHandler(PyObject* error_log) noexcept : PyHandler(error_log) {}

WsgiHandler::~WsgiHandler() = default;

void WsgiHandler::on_request(Exchange& ex) noexcept {
  Impl& im = *impl_;
  StartResponseObject* sr = im.take_sr(&ex);
  if (!sr) {
    log_exception("Out of memory starting a WSGI request");
    ex.send_simple(500, "Internal Server Error\n", true);
    return;
  }
  Ref input = Ref::steal(reinterpret_cast<PyObject*>(im.take_input(&ex)));
  if (input) {
    Py_INCREF(input.get());
    Py_XSETREF(sr->input, input.get());
  }
  Ref environ = input ? Ref::steal(im.build_environ(ex, input.get())) : Ref();
  if (!environ) {
    im.fail(sr);
    return im.finish_call(sr);
  }
  PyObject* args[2] = {environ.get(), reinterpret_cast<PyObject*>(sr)};
  sr->result = PyObject_Vectorcall(im.app.get(), args, 2, nullptr);
  environ.reset();
  if (!sr->result) {
    im.fail(sr);
    return im.finish_call(sr);
  }
  ex.app_state = sr;
  im.drive(sr);
}

void WsgiHandler::on_resume(Exchange& ex) noexcept {
  auto* sr = static_cast<StartResponseObject*>(ex.app_state);
  if (sr) impl_->drive(sr);
}

void WsgiHandler::on_abort(Exchange& ex) noexcept {
  auto* sr = static_cast<StartResponseObject*>(ex.app_state);
  if (sr) impl_->finish_call(sr);
}

// ---- the write() callable and type registration -------------------------------------------------

namespace {

PyObject* write_call(PyObject* o, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* w = reinterpret_cast<WriteObject*>(o);
  if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
    PyErr_SetString(PyExc_TypeError, "write(data) takes exactly one bytes argument");
    return nullptr;
  }
  StartResponseObject* sr = w->sr;
  if (!sr || !sr->ex) {
    PyErr_SetString(PyExc_RuntimeError, "write() called after the request ended");
    return nullptr;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return nullptr;
  PyObject* ret = nullptr;
  if (sr->h->send_headers(sr)) {
    Exchange::WriteStatus ws = sr->ex->write(static_cast<const char*>(view.buf), size_t(view.len));
    if (ws == Exchange::WriteStatus::kPause) {
      // write() is synchronous by contract: wait here until the client took the bytes.
      ws = sr->ex->wait_drained() ? Exchange::WriteStatus::kOk : Exchange::WriteStatus::kError;
    }
    if (ws == Exchange::WriteStatus::kError) {
      PyErr_SetString(PyExc_OSError, "client disconnected");
    } else {
      ret = Py_None;
      Py_INCREF(ret);
    }
  }
  PyBuffer_Release(&view);
  return ret;
}


}  // namespace

bool wsgi_init_types(PyObject* module) noexcept {
  InputType.tp_name = "fulmen._core.Input";
  InputType.tp_basicsize = sizeof(InputObject);
  InputType.tp_flags = Py_TPFLAGS_DEFAULT;
  InputType.tp_doc = "wsgi.input: the request body, streamed from the connection";
  InputType.tp_methods = input_methods;
  InputType.tp_iter = PyObject_SelfIter;
  InputType.tp_iternext = input_iternext;

  init_callable_type<WriteObject>(WriteType, "fulmen._core.Write", write_dealloc,
                                  "The write() callable of PEP 3333");

  FileWrapperType.tp_name = "fulmen._core.FileWrapper";
  FileWrapperType.tp_basicsize = sizeof(FileWrapperObject);
  FileWrapperType.tp_flags = Py_TPFLAGS_DEFAULT;
  FileWrapperType.tp_doc = "wsgi.file_wrapper(filelike, blksize=8192): sent with sendfile(2)";
  FileWrapperType.tp_new = PyType_GenericNew;
  FileWrapperType.tp_init = filewrapper_init;
  FileWrapperType.tp_dealloc = filewrapper_dealloc;
  FileWrapperType.tp_iter = PyObject_SelfIter;
  FileWrapperType.tp_iternext = filewrapper_iternext;
  FileWrapperType.tp_methods = filewrapper_methods;

  init_callable_type<StartResponseObject>(StartResponseType, "fulmen._core.StartResponse", sr_dealloc,
                                          "The start_response() callable of PEP 3333");
  if (PyType_Ready(&InputType) < 0 || PyType_Ready(&WriteType) < 0 ||
      PyType_Ready(&FileWrapperType) < 0 || PyType_Ready(&StartResponseType) < 0)
    return false;
  Py_INCREF(&FileWrapperType);
  if (PyModule_AddObject(module, "FileWrapper", reinterpret_cast<PyObject*>(&FileWrapperType)) < 0) {
    Py_DECREF(&FileWrapperType);
    return false;
  }
  return true;
}

}  // namespace fulmen::bridge
