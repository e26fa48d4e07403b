-- wrk script for bench/run's (j-mix): the decision cache under a realistic mix. Every request carries one of
-- BENCH_MIX_TOKENS' tokens (one per line; 1,000 users) and one of BENCH_MIX_PATHS' paths (50), each picked
-- Zipf-distributed (s = 1: rank r with weight 1/r); BENCH_MIX_NEW_PER_S times a second (per thread) a token from
-- BENCH_MIX_NEW (never sent before: a new user, so a certain miss) is used instead. Counting and the WRK_JSON line
-- are count.lua's (BENCH_COUNT_LUA).
dofile(os.getenv("BENCH_COUNT_LUA"))

local function lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

-- cumulative Zipf weights over n ranks, for a binary search on a uniform draw
local function zipf_cdf(n)
  local cdf, total = {}, 0
  for r = 1, n do
    total = total + 1 / r
    cdf[r] = total
  end
  for r = 1, n do cdf[r] = cdf[r] / total end
  return cdf
end

local function draw(cdf)
  local u, lo, hi = math.random(), 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local count_init = init
function init(args)
  count_init(args)
  tokens = lines(os.getenv("BENCH_MIX_TOKENS"))
  paths = lines(os.getenv("BENCH_MIX_PATHS"))
  fresh = lines(os.getenv("BENCH_MIX_NEW"))
  new_per_s = tonumber(os.getenv("BENCH_MIX_NEW_PER_S") or "5")
  token_cdf, path_cdf = zipf_cdf(#tokens), zipf_cdf(#paths)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  next_fresh, second, used_this_second = math.random(#fresh), os.time(), 0
end

function request()
  local token
  local now = os.time()
  if now ~= second then second, used_this_second = now, 0 end
  if used_this_second < new_per_s and #fresh > 0 then
    used_this_second = used_this_second + 1
    token = fresh[next_fresh]
    next_fresh = next_fresh % #fresh + 1
  else
    token = tokens[draw(token_cdf)]
  end
  return wrk.format("GET", paths[draw(path_cdf)], { ["Authorization"] = "Bearer " .. token })
end
