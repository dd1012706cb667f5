-- wrk script: POST one request body of a front door; prints one JSON line of results at the end.
-- Environment: BENCH_MODEL (model name), BENCH_STREAM ("1" to stream; chat asks include_usage),
-- BENCH_KEY (client key, sent as Authorization: Bearer; empty for none), BENCH_DOOR ("chat",
-- the default: an OpenAI chat completion; "messages": Anthropic Messages; "responses": OpenAI
-- Responses; "embeddings": OpenAI embeddings of the user turn, floats). The same system prompt,
-- user turn and output cap in each format. BENCH_NONCE=1 makes every body unique (a number in
-- the user turn), so a response cache never hits.
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local stream = os.getenv("BENCH_STREAM") == "1"
local key = os.getenv("BENCH_KEY") or ""
local door = os.getenv("BENCH_DOOR") or "chat"
local nonce = os.getenv("BENCH_NONCE") == "1"

local system = "You are terse."
local user = "Say hello in one short sentence, please."
local body
if door == "embeddings" then
  body = '{"model":"' .. model .. '","input":"' .. user .. '","encoding_format":"float"'
elseif door == "messages" then
  body = '{"model":"' .. model .. '","system":"' .. system .. '","messages":[{"role":"user",'
    .. '"content":"' .. user .. '"}],"max_tokens":32'
  if stream then body = body .. ',"stream":true' end
  wrk.headers["anthropic-version"] = "2023-06-01"
elseif door == "responses" then
  body = '{"model":"' .. model .. '","instructions":"' .. system .. '","input":"' .. user .. '",'
    .. '"max_output_tokens":32,"store":false'
  if stream then body = body .. ',"stream":true' end
else
  body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"' .. system .. '"},'
    .. '{"role":"user","content":"' .. user .. '"}],"max_tokens":32'
  if stream then body = body .. ',"stream":true,"stream_options":{"include_usage":true}' end
end
body = body .. "}"

wrk.method = "POST"
wrk.body = body
if nonce then
  local n = 0
  local head, tail = body:match('^(.-' .. user:gsub("%p", "%%%0") .. ')(.*)$')
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, head .. " #" .. n .. tail)
  end
end
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
    .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"lat_p50_us":%d,"lat_p90_us":%d,'
    .. '"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
