"""The Lua scripts that make every job transition atomic in Redis.

All of them take KEYS[1] = the job hash and KEYS[2] = the event stream (same hash slot).
Every entry carries ``n``, its ordinal in the stream (from 1, counted on the job hash), so a
reader can tell a trimmed gap from a quiet stream.
Events are passed as (type, data-json) pairs; the attempt field is added here so that a
write can never carry an attempt other than the one it was fenced on.
Every script that appends to the stream then PUBLISHes on the job's channel (``Keys.written``),
which the API's stream hub listens on; with no subscriber a PUBLISH costs Redis one lookup.
START and CANCEL publish the id of their last entry. WRITE publishes its entries themselves,
five lines each (id, n, t, a, d, joined by ``\\n``), so that a reader caught up with the stream
needs no read; it falls back to the last id when they would exceed ``NOTIFY_MAX_BYTES`` or a
``d`` holds a line break (compact JSON never does).
"""

from __future__ import annotations

NOTIFY_MAX_BYTES = 16_384  # the largest WRITE notification that carries its entries

# the job's notification channel, Keys.written(): the events key with 'written' for 'events'
# (a channel is not a key, so it need not be passed in KEYS)
_NOTIFY = """
local function notify(message)
  redis.call('PUBLISH', string.sub(KEYS[2], 1, -7) .. 'written', message)
end
"""

# Start (or restart) an attempt. ARGV: worker, now, maxlen, active_ttl, retry_reason, lease_ms,
# owner_attempt ('' unless the current attempt's own worker restarts it after an error).
# A running job is taken over only when its lease (``lease_until``, Redis server time in ms)
# has expired, or by its owner. Returns {"started", attempt} | {"busy", attempt} |
# {"cancelled", attempt} | {final status} | {"missing"}; "started" also returns created_at.
START = (
    _NOTIFY
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {status}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local attempt = prev + 1
local maxlen = ARGV[3]
if status == 'running' and ARGV[7] ~= tostring(prev) then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > now_ms then return {'busy', prev} end
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'lease_until', '0')
  notify(redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
    'n', redis.call('HINCRBY', KEYS[1], 'n', 1), 't', 'job.cancelled', 'a', tostring(prev),
    'd', '{"reason":"cancelled before it started","usage":null}'))
  return {'cancelled', prev}
end
if status == 'running' then
  -- supersede the previous attempt: its worker is gone (lease expired) or it is retrying
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
    'n', redis.call('HINCRBY', KEYS[1], 'n', 1), 't', 'job.retrying', 'a', tostring(prev),
    'd', cjson.encode({next_attempt = attempt, reason = ARGV[5]}))
end
redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', attempt, 'worker', ARGV[1],
  'started_at', ARGV[2], 'wseq', '0', 'lease_until', now_ms + tonumber(ARGV[6]))
notify(redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
  'n', redis.call('HINCRBY', KEYS[1], 'n', 1), 't', 'job.started',
  'a', tostring(attempt), 'd', cjson.encode({worker = ARGV[1]})))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'started', attempt, redis.call('HGET', KEYS[1], 'created_at') or '0'}
"""
)

# Renew (ARGV: attempt, lease_ms) or release (lease_ms = 0) the lease of a running attempt.
# Returns 1 while the attempt still owns the job, 0 once another attempt does, -1 when this
# attempt already ended the job (a renewal that crossed its terminal write).
LEASE = """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
  return 0
end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return -1
end
local until_ms = 0
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
end
redis.call('HSET', KEYS[1], 'lease_until', until_ms)
return 1
"""

# Append events, fenced on the attempt; optionally end the job.
# ARGV: attempt, maxlen, n_events, final_status ('' if not final), now, ttl, batch_seq,
#       then n_events pairs (type, data), then hash field/value pairs to set when final.
# batch_seq numbers the writes of one attempt from 1, so a write retried after a lost reply
# is applied once. Returns the last entry id ('' for a repeat), or an error reply FENCED ...
WRITE = (
    _NOTIFY
    + """
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'wseq', 'n')
local attempt, status = h[1], h[2]
local seq = tonumber(h[3] or '0')
if attempt == ARGV[1] and tonumber(ARGV[7]) <= seq then
  return ''
end
if attempt ~= ARGV[1] or status ~= 'running' then
  return redis.error_reply('FENCED job is ' .. tostring(status) .. ' at attempt ' ..
    tostring(attempt) .. ', writer holds attempt ' .. ARGV[1])
end
local n = tonumber(ARGV[3])
local ordinal = tonumber(h[4] or '0')  -- the stream's entries so far (other scripts add too)
redis.call('HSET', KEYS[1], 'wseq', ARGV[7], 'n', ordinal + n)
local last = ''
local lines, size = {}, 0  -- the notification: id, n, t, a, d of each entry
for i = 0, n - 1 do
  ordinal = ordinal + 1
  local kind, data = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  last = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
    'n', ordinal, 't', kind, 'a', ARGV[1], 'd', data)
  if lines then
    size = size + #last + #kind + #ARGV[1] + #data + 25
    if size > NOTIFY_MAX_BYTES or string.find(data, '\\n', 1, true) then
      lines = nil
    else
      local k = #lines
      lines[k + 1], lines[k + 2], lines[k + 3] = last, tostring(ordinal), kind
      lines[k + 4], lines[k + 5] = ARGV[1], data
    end
  end
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', ARGV[5], 'lease_until', '0')
  for i = 8 + 2 * n, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
if last ~= '' then
  notify(lines and table.concat(lines, '\\n') or last)  -- the entries, or just the last id
end
return last
"""
).replace("NOTIFY_MAX_BYTES", str(NOTIFY_MAX_BYTES))

# Cancel. ARGV: now, ttl, maxlen, reason, channel, job_id.
# Returns {"cancelled"} (was queued, now final) | {"cancelling"} (running; the worker
# finishes it) | {status} (already final) | {"missing"}.
CANCEL = (
    _NOTIFY
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {status}
end
if status == 'queued' then
  local attempt = redis.call('HGET', KEYS[1], 'attempt') or '0'
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1],
    'cancel_requested', '1')
  notify(redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
    'n', redis.call('HINCRBY', KEYS[1], 'n', 1), 't', 'job.cancelled', 'a', attempt,
    'd', cjson.encode({reason = ARGV[4]})))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {'cancelled'}
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'cancel_reason', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'cancelling'}
"""
)
