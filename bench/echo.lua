-- One POST with a 16 KiB body per request (for bench/apps/wsgi_echo.py).
-- Static request (no request() function), so wrk builds it once and Lua costs nothing per request.
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
