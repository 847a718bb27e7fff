-- wrk script: POST /v1/events with a new event each request (unique ids), for
-- `parcours serve` (see benches/README.md, "HTTP ingest").
--   wrk -t2 -c64 -d20s -s benches/http/post-events.lua http://127.0.0.1:8080 -- "$(cat parcours.db.api-key)"
-- Per wrk thread, patients h<thread>-<k>: a heart-failure discharge, then ten weights.
-- wrk's connections of one thread share its counter, so a patient's weights can
-- arrive before its discharge now and then (then they are logged and change nothing).

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  key = args[1]
  n = 0
  -- Clinical time now: no deadline of these patients is due during the run.
  now = os.date("!%Y-%m-%dT%H:%M:%SZ")
end

function request()
  local patient = string.format("h%d-%d", tid, math.floor(n / 11))
  local i = n % 11
  n = n + 1
  local body
  if i == 0 then
    body = string.format([[{"specversion":"1.0","id":"%s-adt","tenant":"cpts-load","source":"wrk","subject":"%s","occurredat":"%s","type":"encounter.discharged","data":{"encounter_id":"V-%s","destination":"home","diagnoses":["I50.1"]}}]], patient, patient, now, patient)
  else
    body = string.format([[{"specversion":"1.0","id":"%s-w%d","tenant":"cpts-load","source":"wrk","subject":"%s","occurredat":"%s","type":"observation.recorded","data":{"code":"29463-7","value":%0.1f,"unit":"kg"}}]], patient, i, patient, now, 80 + i * 0.1)
  end
  return wrk.format("POST", "/v1/events", {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/cloudevents+json",
  }, body)
end

function done(summary, latency, requests)
  io.write(string.format("requests %d, non-2xx %d, errors %d; latency p50 %.1f ms, p99 %.1f ms\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
