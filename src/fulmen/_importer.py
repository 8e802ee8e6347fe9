"""Find the user's application: import "module:attr", call a factory, tell WSGI from ASGI.

Errors are FulmenError with one line the user can act on. When the user's own code raised
(an import inside their module failed, their factory raised), its traceback goes in `detail`:
that is their bug and hiding where it happened would not help.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
import traceback
from typing import Any, Callable

from fulmen import FulmenError


def load_app(app: Callable[..., Any] | str, *, factory: bool = False, app_dir: str = ".") -> Callable[..., Any]:
    """The application callable from a callable or a "module:attr" string."""
    name = app if isinstance(app, str) else getattr(app, "__qualname__", repr(app))
    if isinstance(app, str):
        if not os.path.isdir(app_dir):
            raise FulmenError(f"--app-dir {app_dir!r} is not a directory")
        if app_dir not in sys.path:
            sys.path.insert(0, app_dir)
        app = import_from_string(app)
    if factory:
        if not callable(app):
            raise FulmenError(f"{name} is not callable (it is {_kind(app)}), so it cannot be used with --factory")
        try:
            app = app()
        except Exception as exc:
            raise FulmenError(
                f"the factory {name} raised {type(exc).__name__}: {exc} (traceback above)",
                _format_exc(exc),
            ) from exc
        if not callable(app):
            raise FulmenError(f"the factory {name} returned {_kind(app)}, which is not a callable application")
    elif not callable(app):
        raise FulmenError(f"{name} is not callable (it is {_kind(app)}); APP must name the application"
                          " (or a factory, with --factory)")
    return app


def import_from_string(spec: str) -> Any:
    module_name, _, attrs = spec.partition(":")
    if not module_name or not attrs or ":" in attrs:
        raise FulmenError(f'APP must be "module:attribute" (e.g. "myapp:app"), got {spec!r}')
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # "No module named X" is about the user's module only if X is it or one of its parent
        # packages; otherwise an import *inside* their module failed.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise FulmenError(
                f"could not import module {module_name!r}: no module named {exc.name!r} "
                f"(searched --app-dir and sys.path; is the name right, or is --app-dir needed?)"
            ) from None
        raise _import_failed(module_name, exc) from exc
    except Exception as exc:  # SyntaxError, ImportError, anything their module raised at import
        raise _import_failed(module_name, exc) from exc
    for part in attrs.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FulmenError(f"attribute {part!r} not found in {_describe(obj)} (from APP {spec!r})") from None
    return obj


def detect_interface(app: Any) -> str:
    """'asgi3', 'asgi2' or 'wsgi' (what --interface auto means)."""
    if inspect.isclass(app):
        # A class may be an ASGI 3 app (instances awaitable), an ASGI 2 app (App(scope) then
        # await instance(receive, send)) or, per PEP 3333, a WSGI app (App(environ,
        # start_response) returns an iterable instance).
        if hasattr(app, "__await__"):
            return "asgi3"
        if _is_coroutine_function(getattr(app, "__call__", None)):
            return "asgi2"
        if hasattr(app, "__iter__") or _positional_count(app) == 2:
            return "wsgi"
        return "asgi2"
    if _is_coroutine_function(app) or _is_coroutine_function(getattr(app, "__call__", None)):
        return "asgi3"
    return "wsgi"


def _is_coroutine_function(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    if obj is None:
        return False
    if inspect.iscoroutinefunction(obj):
        return True
    # Before 3.12, asgiref and others mark sync-looking callables as coroutine functions with
    # asyncio's marker, which only asyncio.iscoroutinefunction knows (deprecated in 3.14).
    return sys.version_info < (3, 12) and asyncio.iscoroutinefunction(obj)


def _positional_count(cls: type) -> int:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _import_failed(module_name: str, exc: BaseException) -> FulmenError:
    return FulmenError(
        f"importing module {module_name!r} raised {type(exc).__name__}: {exc} (traceback above)",
        _format_exc(exc),
    )


def _format_exc(exc: BaseException) -> str:
    # Drop Fulmen's and importlib's frames: the user's code is what matters.
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in tb if not f.filename.startswith(_NOISE)]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames[-20:] if frames else tb)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _describe(obj: Any) -> str:
    if inspect.ismodule(obj):
        return f"module {obj.__name__!r}"
    return _kind(obj)


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__name__}"
    name = type(obj).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


_NOISE = ("<frozen importlib", os.path.dirname(__file__) + os.sep, os.path.dirname(importlib.__file__) + os.sep)
