//! The Lua scripts of the queue. Each runs atomically and touches only the keys of one queue.
//!
//! Stream entries carry the job envelope as fields: `id` (job id), `a` (attempts already made),
//! `m` (max attempts), `p` (JSON payload), `e` (enqueued at, ms) and optionally `k` (idempotency
//! key). Delayed jobs sit in a sorted set as the same envelope encoded as JSON.
//!
//! Loops are bounded by the batch a caller passes; nothing `unpack`s an unbounded reply.

use std::sync::LazyLock;

use redis::Script;

/// Push a batch: `SET NX PX` the idempotency key if any, then `XADD` (due now) or `ZADD` (later).
/// KEYS: stream, delayed, stats, idempotency keys...; ARGV: now_ms, idem_ttl_ms, n, then per job
/// id, max, payload, run_at_ms, key index into KEYS (0 = none), key text.
pub static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now, ttl, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local pushed, dup = 0, 0
for i = 0, n - 1 do
  local b = 4 + i * 6
  local id, max, payload, run_at, ki, key = ARGV[b], ARGV[b+1], ARGV[b+2], tonumber(ARGV[b+3]), tonumber(ARGV[b+4]), ARGV[b+5]
  local fresh = true
  if ki > 0 then
    fresh = redis.call('SET', KEYS[ki], id, 'NX', 'PX', ttl)
  end
  if fresh then
    if run_at > now then
      redis.call('ZADD', KEYS[2], run_at, cjson.encode({id = id, a = 0, m = tonumber(max), p = payload, e = now, k = key}))
    elseif key ~= '' then
      redis.call('XADD', KEYS[1], '*', 'id', id, 'a', '0', 'm', max, 'p', payload, 'e', ARGV[1], 'k', key)
    else
      redis.call('XADD', KEYS[1], '*', 'id', id, 'a', '0', 'm', max, 'p', payload, 'e', ARGV[1])
    end
    pushed = pushed + 1
  else
    dup = dup + 1
  end
end
if pushed > 0 then redis.call('HINCRBY', KEYS[3], 'enqueued', pushed) end
if dup > 0 then redis.call('HINCRBY', KEYS[3], 'deduplicated', dup) end
return {pushed, dup}
"#,
    )
});

/// Move due delayed jobs into the stream, at most ARGV[2] of them.
/// KEYS: delayed, stream, dead; ARGV: now_ms, limit, dead_maxlen. Returns {moved, next due or false}.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local ok, j = pcall(cjson.decode, m)
  if ok and type(j) == 'table' and type(j.id) == 'string' and type(j.p) == 'string' then
    local args = {'XADD', KEYS[2], '*', 'id', j.id, 'a', string.format('%d', tonumber(j.a) or 0),
      'm', string.format('%d', tonumber(j.m) or 1), 'p', j.p, 'e', string.format('%d', tonumber(j.e) or tonumber(ARGV[1]))}
    if type(j.k) == 'string' and j.k ~= '' then
      table.insert(args, 'k'); table.insert(args, j.k)
    end
    redis.call(unpack(args))
  else
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'id', '', 'status', 'malformed',
      'error', 'malformed delayed entry', 'p', m, 't', ARGV[1])
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, nxt[2] or false}
"#,
    )
});

/// Settle finished deliveries. An entry is settled only if `XACK` still finds it pending: an ack
/// from a worker whose delivery was already re-queued (lease expired) finds nothing and is
/// counted as stale, so it can never overwrite the newer attempt's outcome.
/// KEYS: stream, delayed, done, dead, stats; ARGV: group, now_ms, done_maxlen, dead_maxlen, n,
/// then per ack 10 args: entry, kind (d=done r=retry x=dead), job id, attempts, max, payload,
/// error, extra (d: duration ms, r: due ms, x: status), enqueued ms, idempotency key.
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local g, now, n = ARGV[1], ARGV[2], tonumber(ARGV[5])
local done, retried, dead, stale = 0, 0, 0, 0
for i = 0, n - 1 do
  local b = 6 + i * 10
  local entry, kind = ARGV[b], ARGV[b+1]
  if redis.call('XACK', KEYS[1], g, entry) == 1 then
    redis.call('XDEL', KEYS[1], entry)
    if kind == 'd' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[b+2], 'a', ARGV[b+3], 'ms', ARGV[b+7], 't', now)
      done = done + 1
    elseif kind == 'r' then
      redis.call('ZADD', KEYS[2], ARGV[b+7], cjson.encode({id = ARGV[b+2], a = tonumber(ARGV[b+3]),
        m = tonumber(ARGV[b+4]), p = ARGV[b+5], e = tonumber(ARGV[b+8]), k = ARGV[b+9], err = ARGV[b+6]}))
      retried = retried + 1
    else
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[b+2], 'status', ARGV[b+7],
        'a', ARGV[b+3], 'm', ARGV[b+4], 'error', ARGV[b+6], 'p', ARGV[b+5], 'e', ARGV[b+8], 'k', ARGV[b+9], 't', now)
      dead = dead + 1
    end
  else
    stale = stale + 1
  end
end
if done > 0 then redis.call('HINCRBY', KEYS[5], 'done', done) end
if retried > 0 then redis.call('HINCRBY', KEYS[5], 'retried', retried) end
if dead > 0 then redis.call('HINCRBY', KEYS[5], 'dead', dead) end
if stale > 0 then redis.call('HINCRBY', KEYS[5], 'stale_acks', stale) end
return {done, retried, dead, stale}
"#,
    )
});

/// Put deliveries back in the stream as new entries. Mode `idle` re-queues every entry pending for
/// longer than ARGV[3] ms (a dead or partitioned worker's jobs); the lost delivery counts as an
/// attempt, and a job out of attempts goes to the dead-letter stream. Mode `handback` re-queues the
/// listed entries (prefetched by a stopping worker but never started) without counting an attempt.
/// KEYS: stream, dead, stats; ARGV: group, mode, idle_ms, limit, now_ms, dead_maxlen, entries...
pub static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local g, mode, now = ARGV[1], ARGV[2], ARGV[5]
local ids = {}
local owners = {}
if mode == 'idle' then
  local p = redis.call('XPENDING', KEYS[1], g, 'IDLE', tonumber(ARGV[3]), '-', '+', tonumber(ARGV[4]))
  for i, e in ipairs(p) do ids[i] = e[1]; owners[i] = e[2] end
else
  for i = 7, #ARGV do ids[#ids + 1] = ARGV[i]; owners[#ids] = '' end
end
local requeued, dead = 0, 0
for i, id in ipairs(ids) do
  local r = redis.call('XRANGE', KEYS[1], id, id)
  if redis.call('XACK', KEYS[1], g, id) == 1 then
    redis.call('XDEL', KEYS[1], id)
    local h = {}
    if #r > 0 then
      local f = r[1][2]
      for j = 1, #f, 2 do h[f[j]] = f[j + 1] end
    end
    local a = tonumber(h.a) or 0
    local m = tonumber(h.m) or 1
    if mode == 'idle' then a = a + 1 end
    if h.id == nil or h.p == nil then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'id', h.id or '', 'status', 'malformed',
        'error', 'malformed stream entry ' .. id, 't', now)
      dead = dead + 1
    elseif a >= m then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'id', h.id, 'status', 'lost', 'a', tostring(a),
        'm', tostring(m), 'error', 'worker ' .. owners[i] .. ' lost the job: lease expired', 'p', h.p,
        'e', h.e or now, 'k', h.k or '', 't', now)
      dead = dead + 1
    else
      local args = {'XADD', KEYS[1], '*', 'id', h.id, 'a', tostring(a), 'm', tostring(m), 'p', h.p, 'e', h.e or now}
      if h.k then table.insert(args, 'k'); table.insert(args, h.k) end
      redis.call(unpack(args))
      requeued = requeued + 1
    end
  end
end
if mode == 'idle' and requeued > 0 then redis.call('HINCRBY', KEYS[3], 'reclaimed', requeued) end
if dead > 0 then redis.call('HINCRBY', KEYS[3], 'dead', dead) end
return {requeued, dead}
"#,
    )
});

/// Renew the leases of every entry a consumer holds (`XCLAIM ... JUSTID` resets idle time without
/// counting a delivery) and record its heartbeat.
/// KEYS: stream, workers, worker hash; ARGV: group, consumer, now_ms, worker ttl ms.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000, ARGV[2])
if #p == 0 then return 0 end
local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}
for _, e in ipairs(p) do args[#args + 1] = e[1] end
args[#args + 1] = 'JUSTID'
return #redis.call(unpack(args))
"#,
    )
});
