// WSGI (PEP 3333) on the engine: builds environ from a parsed request, calls the app, and streams
// its response through the Exchange with backpressure. Runs with the GIL held, on whichever thread
// owns the connection (the loop thread, or a pool thread).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bridge/handler.hpp"
#include "bridge/py_ref.hpp"
#include "core/http1/exchange.hpp"

namespace fulmen::bridge {

struct ListenerInfo {
  std::string server_name;
  int server_port = 0;
  bool is_unix = false;
};

struct WsgiOptions {
  std::string root_path;   // SCRIPT_NAME; stripped from the front of PATH_INFO
  std::string url_scheme;  // wsgi.url_scheme
  bool multithread = false;
  bool multiprocess = false;
};

// Registers the Python types (call once, from module init). Returns false with an error set.
bool wsgi_init_types(PyObject* module) noexcept;

class WsgiHandler final : public PyHandler {
 public:
  // Returns null with a Python error set.
  static std::unique_ptr<WsgiHandler> create(PyObject* app, PyObject* error_log,
                                             const std::vector<ListenerInfo>& listeners,
                                             const WsgiOptions& options) noexcept;
  ~WsgiHandler() override;

  void on_request(http1::Exchange& ex) noexcept override;
  void on_resume(http1::Exchange& ex) noexcept override;
  void on_abort(http1::Exchange& ex) noexcept override;


  struct Impl;

 private:
  explicit WsgiHandler(PyObject* error_log) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fulmen::bridge
