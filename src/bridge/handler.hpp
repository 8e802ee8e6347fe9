// What the module needs from an interface bridge (WSGI, ASGI): the engine's AppHandler plus
// logging through the Python error_log callable, and a way to report an exception that must
// stop the server (KeyboardInterrupt, SystemExit).
#pragma once

#include <functional>

#include "bridge/py_ref.hpp"
#include "core/http1/exchange.hpp"

namespace fulmen::bridge {

class PyHandler : public http1::AppHandler {
 public:
  explicit PyHandler(PyObject* error_log) noexcept : error_log_(Ref::borrow(error_log)) {}
  ~PyHandler() override;

  // Logs the pending Python exception through error_log (clears it). Never raises.
  void log_exception(const char* message) noexcept;
  // Logs a message (no exception); keeps any pending exception. Never raises.
  void log_message(const char* message) noexcept;

  // How to stop the server when the app raised a BaseException that is not an Exception.
  void set_stop_callback(std::function<void()> cb) noexcept { stop_ = std::move(cb); }
  // The pending exception is a KeyboardInterrupt/SystemExit from the app: keep the first one
  // (clears it) and stop the server.
  void set_fatal() noexcept;
  // Moves that exception out (new references), if there is one, for run() to re-raise.
  void take_fatal(PyObject** type, PyObject** value, PyObject** tb) noexcept;

 protected:
  Ref error_log_;
  std::function<void()> stop_;
  PyObject* fatal_type_ = nullptr;  // owned, with the two below
  PyObject* fatal_value_ = nullptr;
  PyObject* fatal_tb_ = nullptr;
};

}  // namespace fulmen::bridge
