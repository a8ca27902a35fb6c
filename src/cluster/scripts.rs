//! The Lua scripts run in Redis. The keys each touches share one hash
//! tag (the path's, or the list's), so each runs on one Redis Cluster
//! node. The limits' scripts read Redis's own clock (`TIME`: the nodes'
//! clocks may drift) and write numbers with `%.0f` (Lua's `tostring`
//! would write large ones in exponent form).

/// GCRA: takes up to `ARGV[3]` tokens at once from a throttle whose
/// emission interval is `ARGV[1]` µs and whose burst tolerance is `ARGV[2]`
/// µs. `KEYS[1]` holds the theoretical arrival time (µs since the epoch).
/// Returns `{granted, wait_us}`: when nothing was granted, how long until
/// the next token.
pub const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval) + 1
local n = math.min(room, want)
if n < 1 then
  return {0, tat - tolerance - now}
end
tat = tat + n * interval
local ttl_ms = math.floor((tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl_ms))
return {n, 0}
"#;

/// Connection leases: `KEYS[1]` is a sorted set of lease names
/// (`node:shard:n`) scored by their expiry (ms, Redis time); `KEYS[2]`
/// the askers left wanting (`node:shard`, scored by expiry: they ask
/// again within ms). Drops the expired ones, then grants the leases named
/// in `ARGV[4..]` while fewer than `ARGV[1]` are held, each for `ARGV[2]`
/// ms; an asker (`ARGV[3]`) granted fewer than it asked for is noted as
/// wanting for two seconds. Returns how many (the first ones) were
/// granted.
pub const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local free = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[1])
local granted = 0
local expiry = string.format('%.0f', now + ttl)
for i = 4, #ARGV do
  if granted >= free then break end
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  granted = granted + 1
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
if granted < #ARGV - 3 then
  redis.call('ZADD', KEYS[2], string.format('%.0f', now + 2000), ARGV[3])
  redis.call('PEXPIRE', KEYS[2], 4000)
else
  redis.call('ZREM', KEYS[2], ARGV[3])
end
return granted
"#;

/// Renews the leases named in `ARGV[4..]` (the asker `ARGV[3]`'s) for
/// `ARGV[2]` ms. A lease that expired (or that Redis lost, restarting)
/// is taken again if fewer than `ARGV[1]` are held. Returns `{fair,
/// others_want, lost...}`: the asker's fair share (the limit over the
/// askers holding or wanting leases, at least 1), whether another asker
/// is left wanting, and the names that could not be renewed.
pub const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now))
local expiry = string.format('%.0f', now + ttl)
local lost = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) or
     redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local askers = {}
local count = 0
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local who = string.match(name, '^(.*):[^:]*$') or name
  if not askers[who] then askers[who] = true; count = count + 1 end
end
local others_want = 0
for _, who in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if who ~= ARGV[3] then others_want = 1 end
  if not askers[who] then askers[who] = true; count = count + 1 end
end
local fair = math.max(1, math.floor(limit / math.max(count, 1)))
local answer = {fair, others_want}
for _, name in ipairs(lost) do answer[#answer + 1] = name end
return answer
"#;

/// A shared list's changes: `KEYS[1]` the hash of its entries (field ->
/// value), `KEYS[2]` the log of changes (a stream, trimmed to about
/// `ARGV[2]` entries). `ARGV[1]` names the node (kept in each log entry
/// for an operator reading it), then field/value pairs follow (an empty
/// value is a removal: it stays in the hash as a tombstone, so that a
/// node that missed it does not bring the entry back). Returns the last
/// log id written.
pub const LIST_PUBLISH: &str = r#"
local id = ''
for i = 3, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[1], field, value)
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'f', field, 'v', value, 'n', ARGV[1])
end
return id
"#;

/// Reads a shared list's log: `KEYS[1]` the log, `KEYS[2]` its epoch
/// (made here if missing, `ARGV[3]`: a Redis that lost its data gets a
/// new one, so that readers know their place in the log means nothing);
/// up to `ARGV[2]` entries after the id
/// `ARGV[1]` (none when 0). Returns `{epoch, last id generated, first
/// id or '', length, entries ever added, entries}`, each entry `{id,
/// {field, value, ...}}` (`entries-added` is Redis 7's; trimming does not
/// move `max-deleted-entry-id`, so the reader works out what trimming
/// took from these).
pub const LIST_READ: &str = r#"
redis.call('SET', KEYS[2], ARGV[3], 'NX')
local epoch = redis.call('GET', KEYS[2])
local last, first, length, added = '0-0', '', 0, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    local k, v = info[i], info[i + 1]
    if k == 'last-generated-id' then last = v end
    if k == 'first-entry' and v then first = v[1] end
    if k == 'length' then length = v end
    if k == 'entries-added' then added = v end
  end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
return {epoch, last, first, length, added, entries}
"#;
