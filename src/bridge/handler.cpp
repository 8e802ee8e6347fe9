// Logging for the interface bridges; see handler.hpp.
#include "bridge/handler.hpp"

namespace fulmen::bridge {

void PyHandler::log_exception(const char* message) noexcept {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  if (!type) return log_message(message);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb && value) PyException_SetTraceback(value, tb);
  Ref t = Ref::steal(type), v = Ref::steal(value), b = Ref::steal(tb);
  Ref msg = Ref::steal(PyUnicode_FromString(message));
  Ref r = msg ? Ref::steal(PyObject_CallFunctionObjArgs(error_log_.get(), msg.get(),
                                                        v ? v.get() : Py_None, nullptr))
              : Ref();
  if (!r) PyErr_WriteUnraisable(error_log_.get());
}

void PyHandler::log_message(const char* message) noexcept {
  ErrorStash stash;
  Ref msg = Ref::steal(PyUnicode_FromString(message));
  Ref r = msg ? Ref::steal(PyObject_CallFunctionObjArgs(error_log_.get(), msg.get(), Py_None,
                                                        nullptr))
              : Ref();
  if (!r) PyErr_WriteUnraisable(error_log_.get());
}

PyHandler::~PyHandler() {
  Py_XDECREF(fatal_type_);
  Py_XDECREF(fatal_value_);
  Py_XDECREF(fatal_tb_);
}

void PyHandler::set_fatal() noexcept {
  if (!fatal_type_) {
    PyErr_Fetch(&fatal_type_, &fatal_value_, &fatal_tb_);
    PyErr_NormalizeException(&fatal_type_, &fatal_value_, &fatal_tb_);
  } else {
    PyErr_Clear();
  }
  if (stop_) stop_();
}

void PyHandler::take_fatal(PyObject** type, PyObject** value, PyObject** tb) noexcept {
  *type = fatal_type_;
  *value = fatal_value_;
  *tb = fatal_tb_;
  fatal_type_ = fatal_value_ = fatal_tb_ = nullptr;
}

}  // namespace fulmen::bridge
