-- HTTP/1.1 pipelining for wrk: every write carries DEPTH requests back to back.
--
--   wrk ... -s bench/pipeline.lua http://127.0.0.1:PORT/ -- DEPTH [BODY_BYTES]
--
-- DEPTH defaults to 16. With BODY_BYTES > 0 each request is a POST with that many bytes of body
-- (for the echo app); otherwise a plain GET.
--
-- Counting: wrk counts every parsed *response* as one request (its "requests" and Requests/sec
-- are per response, so one write here adds DEPTH to the count), and sends the next batch only
-- when all DEPTH responses of the previous one have arrived. Its latency histogram, however, gets
-- one sample per batch: the time from writing the batch to the last of its DEPTH responses.

local req

init = function(args)
   local depth = tonumber(args[1]) or 16
   local body_bytes = tonumber(args[2]) or 0
   local one
   if body_bytes > 0 then
      one = wrk.format("POST", nil,
                       {["Content-Type"] = "application/octet-stream",
                        ["Content-Length"] = tostring(body_bytes)},
                       string.rep("x", body_bytes))
   else
      one = wrk.format("GET", nil)
   end
   local parts = {}
   for i = 1, depth do
      parts[i] = one
   end
   req = table.concat(parts)
end

request = function()
   return req
end
