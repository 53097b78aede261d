-- wrk script: POST /heartbeat, every request a new agent id; each thread sends its share.
-- wrk ... -s flood.lua URL -- PER_THREAD PREFIX PID DONE_PATH
-- After its share is answered a thread writes DONE_PATH-<thread> and stops; done() prints
-- one line: "flood: sent=N accepted=N refused=N unavailable=N other=N".
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  per, prefix, pid, done_path = tonumber(args[1]), args[2], tonumber(args[3]), args[4]
  sent, accepted, refused, unavailable, other = 0, 0, 0, 0, 0
  finished = false
  -- wrk calls request() once on its first thread to check the script (wrk.c,
  -- script_verify_request) and never sends that request: it must not use up an id
  checking = tid == 0
end

function delay()
  return sent < per and 0 or 1000  -- share sent: the rest of its answers are in flight
end

function request()
  if checking then
    checking = false
    return wrk.format("GET", "/healthz")
  end
  if sent < per then
    sent = sent + 1
    local body = string.format(
      '{"agent_id":"%s-%d-%d","pid":%d,"timestamp":"2026-11-27T20:35:24.456284565Z","version":"1.0.0","status":"running","cpu":1.5,"memory":12582912}',
      prefix, tid, sent, pid)
    return wrk.format("POST", "/heartbeat", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/healthz")  -- share sent: something harmless, once a second
end

function response(status, headers, body)
  if status == 200 then
    if not body:find("heartbeat accepted", 1, true) then return end  -- a /healthz answer
    accepted = accepted + 1
  elseif status == 429 then
    refused = refused + 1
  elseif status == 503 then
    unavailable = unavailable + 1
  else
    other = other + 1
  end
  if not finished and accepted + refused + unavailable + other >= per then
    finished = true
    local f = io.open(done_path .. "-" .. tid, "w")
    f:write("done\n")
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local t = {sent = 0, accepted = 0, refused = 0, unavailable = 0, other = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(t) do
      t[name] = t[name] + thread:get(name)
    end
  end
  io.write(string.format("flood: sent=%d accepted=%d refused=%d unavailable=%d other=%d\n",
                         t.sent, t.accepted, t.refused, t.unavailable, t.other))
end
