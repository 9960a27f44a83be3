-- wrk script for the proxy's HTTP data API (bench/proxy_http.py runs it).
--
--   wrk -s bench/wrk_entities.lua http://127.0.0.1:PORT -- METHOD PATH_PREFIX KEYS BODY_BYTES
--
-- Each request picks one of KEYS keys at random; the key path segment is "k%07d", which
-- is itself valid unpadded base64url, so the proxy decodes it to the bytes the benchmark
-- seeded. PUT sends BODY_BYTES bytes as application/octet-stream. At the end `done`
-- prints one line "WRK_JSON {...}" with the exact p50/p99 (µs) and the error counts, so
-- the benchmark does not parse wrk's rounded text.

local method, prefix, keys, body
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

function init(args)
  method = args[1] or "GET"
  prefix = args[2] or "/"
  keys = tonumber(args[3] or "1000")
  if method == "PUT" then
    body = string.rep("v", tonumber(args[4] or "1024"))
  end
  math.randomseed(os.time() * 16 + (thread_id or 0))
end

function request()
  local path = prefix .. string.format("k%07d", math.random(0, keys - 1))
  if method == "PUT" then
    return wrk.format("PUT", path, { ["Content-Type"] = "application/octet-stream" }, body)
  end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
