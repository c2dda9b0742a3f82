-- wrk script for the receiver benchmark: every thread (one connection each, so its
-- answers come back in the order it sent) replays its own file of pre-signed webhooks
-- and counts answers by position, so the benchmark knows exactly which webhook-ids
-- were accepted. Usage: wrk -t N -c N -s receiver.lua URL -- DIR
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

function init(args)
  local dir = args[1]
  reqs = {}
  local f = assert(io.open(dir .. "/requests." .. tid .. ".tsv", "r"))
  for line in f:lines() do
    local path, id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = id,
      ["webhook-timestamp"] = ts,
      ["webhook-signature"] = sig,
    }, body)
  end
  f:close()
  available = #reqs
  -- wrk calls request() once on thread 0 to inspect it (script_verify_request) and
  -- never sends that one: do not count it, or positions would be off by one.
  dry_run = (tid == 0)
  sent = 0
  answered = 0
  ok = 0
  bad_at = ""
end

function request()
  if dry_run then
    dry_run = false
    return reqs[1]
  end
  sent = sent + 1
  return reqs[((sent - 1) % available) + 1]
end

function response(status, headers, body)
  answered = answered + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
  elseif #bad_at < 4000 then
    bad_at = bad_at .. answered .. ":" .. status .. ","
  end
end

function done(summary, latency, requests)
  local parts = {}
  for _, t in ipairs(threads) do
    parts[#parts + 1] = string.format(
      '{"tid":%d,"available":%d,"sent":%d,"answered":%d,"ok":%d,"bad_at":"%s"}',
      t:get("tid"), t:get("available"), t:get("sent"), t:get("answered"), t:get("ok"), t:get("bad_at"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},"threads":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, table.concat(parts, ",")))
end
