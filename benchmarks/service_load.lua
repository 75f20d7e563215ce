-- wrk script of benchmarks/service_load.py (one mode per run):
--   wrk ... -s benchmarks/service_load.lua URL -- classify IMAGE_FILE   multipart POST /classify of one image
--   wrk ... -s benchmarks/service_load.lua URL -- neighbors N [K]       GET /neighbors?id=<random 0..N-1>&k=K
--   wrk ... -s benchmarks/service_load.lua URL -- upload IMAGE_FILE PATH multipart POST PATH (e.g. /neighbors?k=10) of one image
-- done() prints one line, "RESULT {json}": request and error counts, latency percentiles in microseconds.
-- Non-2xx answers are counted by the caller from the server's /metrics, so no response() hook slows wrk down.

local boundary = "----simclr-benchmark-boundary"
local mode, n, k, fixed

function init(args)
  mode = args[1]
  if mode == "classify" or mode == "upload" then
    local f = assert(io.open(args[2], "rb"))
    local image = f:read("*a")
    f:close()
    local body = "--" .. boundary .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="image.png"\r\n'
      .. "Content-Type: image/png\r\n\r\n" .. image .. "\r\n"
      .. "--" .. boundary .. "--\r\n"
    fixed = wrk.format("POST", mode == "upload" and args[3] or "/classify", { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, body)
  elseif mode == "neighbors" then
    n = assert(tonumber(args[2]), "neighbors needs the index size")
    k = tonumber(args[3] or "5")
    -- Each wrk thread has its own Lua state: seed them apart.
    math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 1000003)
  else
    error("first script argument: classify, upload or neighbors")
  end
end

function request()
  if fixed then
    return fixed
  end
  return wrk.format("GET", "/neighbors?id=" .. math.random(0, n - 1) .. "&k=" .. k)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99)))
end
