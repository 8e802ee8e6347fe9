// Static Python types of the bridge.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstddef>

namespace fulmen::bridge {

// Fills `t` for objects that Python calls through vectorcall (receive, send, start_response...):
// T must be standard-layout, start with PyObject_HEAD and have a `vectorcallfunc vectorcall`
// member that each new object sets.
template <class T>
void init_callable_type(PyTypeObject& t, const char* name, destructor dealloc, const char* doc,
                        PyMethodDef* methods = nullptr) noexcept {
  t.tp_name = name;
  t.tp_basicsize = sizeof(T);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL;
  t.tp_vectorcall_offset = offsetof(T, vectorcall);
  t.tp_call = PyVectorcall_Call;
  t.tp_dealloc = dealloc;
  t.tp_methods = methods;
  t.tp_doc = doc;
}

}  // namespace fulmen::bridge
