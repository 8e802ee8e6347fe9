// What the ASGI bridge's files share (asgi.cpp: HTTP, the handler, tasks; asgi_ws.cpp:
// WebSocket): the interned names, the ready-awaitable, and the handler's state. Private to
// src/bridge.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "bridge/asgi.hpp"
#include "bridge/py_ref.hpp"
#include "core/http1/parser.hpp"

namespace fulmen::bridge {

using http1::Exchange;

namespace asgi {

// Every key and constant string the bridge uses, interned once at start.
struct Names {
  Ref type, asgi, http_version, method, scheme, path, raw_path, query_string, root_path, headers,
      client, server, state, extensions, body, more_body, status, http_request, http_disconnect,
      http_response_start, http_response_body, set_result, done, create_future, http, v1_1, v1_0,
      empty_bytes, empty_str, asgi_info, run_helper, call_soon, https, wss, add;
  Ref methods[10];
  // WebSocket
  Ref websocket, ws, subprotocols, subprotocol, text, bytes, code, reason, websocket_connect,
      websocket_accept, websocket_receive, websocket_send, websocket_close, websocket_disconnect,
      websocket_http_response_start, websocket_http_response_body, websocket_http_response;
  Ref connect_msg;     // {"type": "websocket.connect"}, shared like disconnect_msg
  Ref disconnect_msg;  // {"type": "http.disconnect"}, shared: receivers must not mutate it
};
extern Names* N;

// An awaitable that is already complete: `await` gives value without suspending. Steals value
// (null for None).
PyObject* make_ready(PyObject* value) noexcept;
// The shared Ready(None), a new reference.
PyObject* ready_none_ref() noexcept;

struct CallObject;

// The "headers" of a response message as views into the app's bytes objects, which *seq keeps
// alive; a Content-Length among them goes to *content_length (may be null). False with an error.
bool parse_headers(PyObject* headers, Ref* seq, std::vector<http1::Header>& out,
                   long long* content_length) noexcept;

// asgi_ws.cpp
bool ws_init_names(Names* n) noexcept;
bool ws_init_types(PyObject* module) noexcept;
bool ws_attach(AsgiHandler::Impl& im) noexcept;  // from AsgiHandler::attach
bool is_ws_call(void* app_state) noexcept;
void ws_on_request(AsgiHandler::Impl& im, Exchange& ex) noexcept;
void ws_on_resume(AsgiHandler::Impl& im, Exchange& ex) noexcept;
void ws_on_abort(AsgiHandler::Impl& im, Exchange& ex) noexcept;
void ws_on_disconnect(AsgiHandler::Impl& im, Exchange& ex) noexcept;
void ws_on_message(AsgiHandler::Impl& im, Exchange& ex, bool binary, std::string_view data) noexcept;
void ws_on_masked_message(AsgiHandler::Impl& im, Exchange& ex, const char* data, size_t n,
                          const uint8_t key[4], size_t phase) noexcept;
void ws_on_closed(AsgiHandler::Impl& im, Exchange& ex, uint16_t code, std::string_view reason) noexcept;

}  // namespace asgi

struct AsgiHandler::Impl {
  AsgiHandler* outer = nullptr;
  Ref app;
  Ref loop;
  Ref state;                 // lifespan state (a dict) or null
  Ref create_future;         // loop.create_future, looked up once
  Ref task_type;             // asyncio.Task
  Ref task_kwnames;          // ("loop", "name") or, on 3.12+, ("loop", "name", "eager_start")
  // Every request's Task has this name: before 3.12, Task() formats "Task-<n>" for each one.
  Ref task_name;
  // Python 3.10/3.11 have no eager tasks. Task() schedules its first step with loop.call_soon,
  // looked up on the loop object, so for the moment a Task is made, a stand-in call_soon in the
  // loop's instance dict catches that step and start_task() runs it at once, in the task's
  // context: what 3.12's eager_start does. Null (tasks are scheduled normally) for a loop
  // without an instance dict; skipped while someone else has patched call_soon there.
  Ref loop_dict;
  Ref step_catcher;          // the stand-in (a StepCatcher)
  Ref real_call_soon;        // the loop's own call_soon, bound before any shadowing
  // The same for the registry of all tasks (a WeakSet, whose add() is Python code): Task() adds
  // itself through the stand-in, which only remembers it, and start_task() registers the task
  // for real only if its first step did not finish it, as 3.12 does for eager tasks. Null when
  // the registry has no instance dict.
  Ref all_tasks;             // _asyncio._all_tasks
  Ref all_tasks_dict;        // its instance dict
  Ref add_catcher;           // a StepCatcher standing in for all_tasks.add
  std::vector<Ref> server_tuples;  // per listener: (host, port) or None
  std::string root_path;
  Ref root_path_str, root_path_bytes;
  Ref scope_proto;           // every scope key in order; constants set, the rest None (attach())
  std::string scratch;
  // scope["client"] tuples, direct-mapped by port: a keep-alive connection's requests share one.
  struct ClientEntry {
    int port = -1;
    std::string addr;
    Ref tuple;
  };
  ClientEntry clients[64];
  std::vector<http1::Header> resp_headers;  // views into the app's header bytes, per response

  Ref ws_scope_proto;        // the same for websocket scopes
  std::string_view ws_protocols[32];  // scratch for the offered subprotocols

  PyObject* build_scope(Exchange& ex) noexcept;
  PyObject* build_ws_scope(Exchange& ex) noexcept;
  // path, raw_path, query_string, headers, client, server, state: what both scopes share.
  bool fill_request(PyObject* scope, Exchange& ex) noexcept;
  PyObject* start_task(PyObject* coro) noexcept;  // new ref to the Task, or null (error set)
  bool build_scope_proto() noexcept;
  PyObject* client_tuple(std::string_view addr, int port) noexcept;  // new ref, or null (error set)
  PyObject* body_message(asgi::CallObject* c) noexcept;  // new ref or null (error set)
  void resolve(PyObject** fut, PyObject* value) noexcept;
  void detach(asgi::CallObject* c) noexcept;
};

}  // namespace fulmen::bridge
