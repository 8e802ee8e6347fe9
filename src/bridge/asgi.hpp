// ASGI 3.0 HTTP on the engine, run on an asyncio (or uvloop) event loop in the loop's thread.
//
// The engine's epoll fd is watched with loop.add_reader and each readiness runs Server::step(0),
// so there is no polling and no thread hop. A request becomes a scope dict and the app's
// coroutine, started as an eager Task (3.12+: eager_start; 3.10/3.11: the Task's first step is
// caught from loop.call_soon and run at once) so that a request that needs no I/O wait
// completes inside the step that read it. receive() and send()
// complete without a loop round-trip whenever the data or the socket buffer space is already
// there; otherwise they return a future the engine resolves.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bridge/handler.hpp"
#include "bridge/wsgi.hpp"

namespace fulmen::bridge {

// Registers the Python types (once, from module init). False with an error set.
bool asgi_init_types(PyObject* module) noexcept;

class AsgiHandler final : public PyHandler {
 public:
  // Null with a Python error set.
  static std::unique_ptr<AsgiHandler> create(PyObject* app, PyObject* error_log,
                                             const std::vector<ListenerInfo>& listeners,
                                             const WsgiOptions& options) noexcept;
  ~AsgiHandler() override;

  // Binds the handler to a running loop and the lifespan state before serving. False with an
  // error set.
  bool attach(PyObject* loop, PyObject* state) noexcept;

  void on_request(http1::Exchange& ex) noexcept override;
  void on_resume(http1::Exchange& ex) noexcept override;
  void on_abort(http1::Exchange& ex) noexcept override;
  void on_body_ready(http1::Exchange& ex) noexcept override;
  void on_disconnect(http1::Exchange& ex) noexcept override;
  void on_ws_message(http1::Exchange& ex, bool binary, std::string_view data) noexcept override;
  void on_ws_masked_message(http1::Exchange& ex, char* data, size_t n, const uint8_t key[4],
                            size_t phase) noexcept override;
  void on_ws_closed(http1::Exchange& ex, uint16_t code, std::string_view reason) noexcept override;

  struct Impl;

 private:
  explicit AsgiHandler(PyObject* error_log) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fulmen::bridge
