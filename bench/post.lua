-- wrk script: POST an OpenAI chat completion with a bearer token and a tenant header,
-- count the requests actually written, and write a JSON summary in done().
--
-- Environment (read by every wrk thread's Lua state):
--   BENCH_TOKEN   bearer token            (default "x")
--   BENCH_TENANT  X-Tenant-ID value       (default "bench")
--   BENCH_MODEL   model name              (default "gpt-4o-mini")
--   BENCH_STREAM  "1" for a stream request with stream_options.include_usage
--   BENCH_OUT     path of the JSON summary (default: stdout, one line prefixed BENCH_JSON)
--   BENCH_HEADERS more request headers, "Name: value" pairs separated by newlines
--
-- JSON fields: requests (completed responses), sent (requests written), duration_us,
-- bytes, rps, errors {connect, read, write, status (HTTP status > 399), timeout},
-- latency_us {p50, p90, p99, p999, mean, stdev, max}.

local token = os.getenv("BENCH_TOKEN") or "x"
local tenant = os.getenv("BENCH_TENANT") or "bench"
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local stream = os.getenv("BENCH_STREAM") == "1"
local out = os.getenv("BENCH_OUT")

local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello from the benchmark."}]'
if stream then
  body = body .. ',"stream":true,"stream_options":{"include_usage":true}}'
else
  body = body .. '}'
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["X-Tenant-ID"] = tenant
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local req = nil
sent = 0

function init(args)
  req = wrk.format()
end

-- Defining request() makes wrk call it for every request it writes, so `sent`
-- counts requests put on the wire (including the ones still in flight when wrk stops).
function request()
  sent = sent + 1
  return req
end

function done(summary, latency, requests)
  local total_sent = 0
  for _, t in ipairs(threads) do
    total_sent = total_sent + (t:get("sent") or 0)
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  local rps = 0
  if secs > 0 then rps = summary.requests / secs end
  local s = string.format(
    '{"requests":%d,"sent":%d,"duration_us":%d,"bytes":%d,"rps":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.3f,"stdev":%.3f,"max":%d}}',
    summary.requests, total_sent, summary.duration, summary.bytes, rps,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.stdev, latency.max)
  if out and out ~= "" then
    local f = assert(io.open(out, "w"))
    f:write(s, "\n")
    f:close()
  else
    io.write("BENCH_JSON ", s, "\n")
  end
end
