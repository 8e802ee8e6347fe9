// Owned references to Python objects. Every PyObject* the bridge owns lives in a Ref; raw pointers
// elsewhere are borrowed and say so.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <unistd.h>

#include <utility>

namespace fulmen::bridge {

class Ref {
 public:
  Ref() noexcept = default;
  // Takes ownership of a new reference (may be null, e.g. after a failed call).
  static Ref steal(PyObject* o) noexcept { return Ref(o); }
  // Adds a reference to a borrowed object.
  static Ref borrow(PyObject* o) noexcept {
    Py_XINCREF(o);
    return Ref(o);
  }
  Ref(const Ref& o) noexcept : p_(o.p_) { Py_XINCREF(p_); }
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Ref& operator=(Ref o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~Ref() { Py_XDECREF(p_); }

  PyObject* get() const noexcept { return p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  // Gives the reference away (to an API that steals, or as a return value).
  PyObject* release() noexcept { return std::exchange(p_, nullptr); }
  void reset() noexcept { Py_CLEAR(p_); }

 private:
  explicit Ref(PyObject* o) noexcept : p_(o) {}
  PyObject* p_ = nullptr;
};

// Holds the GIL for a scope on a thread that may or may not hold it already.
class GilGuard {
 public:
  GilGuard() noexcept : state_(PyGILState_Ensure()) {}
  ~GilGuard() { PyGILState_Release(state_); }
  GilGuard(const GilGuard&) = delete;
  GilGuard& operator=(const GilGuard&) = delete;

 private:
  PyGILState_STATE state_;
};

// Saves and restores the pending exception around code that must run with none set.
class ErrorStash {
 public:
  ErrorStash() noexcept { PyErr_Fetch(&type_, &value_, &tb_); }
  ~ErrorStash() { PyErr_Restore(type_, value_, tb_); }
  ErrorStash(const ErrorStash&) = delete;
  ErrorStash& operator=(const ErrorStash&) = delete;

 private:
  PyObject* type_ = nullptr;
  PyObject* value_ = nullptr;
  PyObject* tb_ = nullptr;
};

inline bool py_finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

// Takes the GIL back. If the interpreter is shutting down, CPython would end this thread with a
// forced unwind, which std::terminate()s on the way through our noexcept frames: park instead, as
// CPython 3.14 itself does. The process is exiting anyway.
inline void restore_thread(PyThreadState* ts) noexcept {
  if (py_finalizing()) {
    for (;;) pause();
  }
  PyEval_RestoreThread(ts);
}

}  // namespace fulmen::bridge
