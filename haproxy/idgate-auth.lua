-- idgate-auth.lua: the auth_request step of idgate, as an HAProxy 2.8 Lua action.
--
-- For each request the action asks idgate's /auth endpoint (a plain HTTP GET through HAProxy's own
-- `core.httpclient()`) whether the request may pass, and copies the answer into txn variables that
-- haproxy.cfg then acts on (fail-closed: everything that is not an explicit allow is refused there).
--
-- Usage in haproxy.cfg:
--     lua-load /path/to/idgate-auth.lua
--     http-request lua.idgate_auth "http://127.0.0.1:9180/auth" "1000"
--                  ^ action          ^ auth URL (IP literal)        ^ timeout in ms
-- or over TLS (httpclient.ssl.ca-file / httpclient.ssl.verify required in global):
--     http-request lua.idgate_auth_at "https://idgate.internal/auth" "1000" "127.0.0.1:9180"
--                  ^ action             ^ URL with the certificate's name ^ timeout ^ address to connect to
--     (HAProxy 2.8's httpclient checks the certificate against the URL's host and never matches an IP literal,
--     and it resolves names through DNS resolvers only: the name goes in the URL, the address in `dst`)
--
-- Request to idgate (no body):
--     X-Idgate-Method, X-Idgate-Host, X-Idgate-Path (HAProxy's normalised path, no query),
--     X-Idgate-Query (may be empty), X-Idgate-Source (client address), X-Idgate-Proto (https|http),
--     X-Idgate-Request-Id (HAProxy's unique-id, for the logs only),
--     plus the client's Authorization (every copy), Cookie (every line joined with "; "), Accept,
--     Content-Type, X-Requested-With, Sec-Fetch-Mode and User-Agent when present.
--
-- Answer from idgate: 200 allow, 401 no/bad credentials, 403 forbidden, 400 malformed, 302 login redirect,
-- 503 with X-Idgate-Decision (idgate's own refusal: e.g. keys_unavailable + Retry-After, relayed by the config).
-- Its X-Idgate-* headers land in txn.idgate.* variables (see ANSWER_VARS). Any other status (a 503 without
-- X-Idgate-Decision is httpclient's own "could not connect"), a duplicated or invalid answer header, a connection
-- error or a timeout sets NO variable and logs one warning; the config turns "no txn.idgate.status" into 503.
-- The action never raises (everything runs under pcall).
--
-- HAProxy 2.8 detail: header tables (request and httpclient response) map a lower-case name to a
-- 0-indexed list of values. The helpers below accept 0- and 1-indexed lists, so a later HAProxy that
-- switches to 1-indexed lists keeps working.

-- Client request headers copied to idgate, by lower-case name -> name sent.
local FORWARDED_HEADERS = {
    { "authorization", "Authorization" },
    { "cookie", "Cookie" },
    { "accept", "Accept" },
    { "content-type", "Content-Type" },
    { "x-requested-with", "X-Requested-With" },
    { "sec-fetch-mode", "Sec-Fetch-Mode" },
    { "user-agent", "User-Agent" },
}

-- Forwarded headers httpclient would otherwise fill in with its own defaults.
local EMPTY_UNLESS_SENT = { "Accept", "User-Agent" }

-- Answer headers (lower-case) -> txn variable. Each may appear at most once.
local ANSWER_VARS = {
    { "x-idgate-decision", "txn.idgate.decision" },
    { "x-idgate-reason", "txn.idgate.reason" },
    { "x-idgate-upstream", "txn.idgate.upstream" },
    { "x-idgate-user", "txn.idgate.user" },
    { "x-idgate-email", "txn.idgate.email" },
    { "x-idgate-name", "txn.idgate.name" },
    { "x-idgate-groups", "txn.idgate.groups" },
    { "x-idgate-roles", "txn.idgate.roles" },
    { "x-idgate-role", "txn.idgate.role" },
    { "x-idgate-subject", "txn.idgate.subject" },
    { "x-idgate-issuer", "txn.idgate.issuer" },
    { "www-authenticate", "txn.idgate.www_authenticate" },
    { "location", "txn.idgate.location" },
    { "retry-after", "txn.idgate.retry_after" },
    { "x-idgate-assertion", "txn.idgate.assertion" },
    { "x-idgate-cookie-rewrite", "txn.idgate.cookie_rewrite" },
    { "x-idgate-cookie", "txn.idgate.cookie" },
    { "x-idgate-strip-authorization", "txn.idgate.strip_authorization" },
    -- a cacheable allow: haproxy.cfg keeps the entry in the decision cache (README "The decision cache in HAProxy")
    { "x-idgate-cache-ttl", "txn.idgate.cache_ttl" },
    { "x-idgate-cache-entry", "txn.idgate.cache_entry" },
}

-- Set-Cookie values idgate may answer (a refreshed, re-issued or cleared session: one per cookie chunk); each
-- lands in txn.idgate.set_cookie_<i>, and haproxy.cfg adds them to the client's response. More is an error.
local MAX_SET_COOKIES = 8

-- Statuses idgate may answer; anything else is an error (nothing set -> 503). A 503 counts only when it carries
-- X-Idgate-Decision (idgate's own answer; httpclient synthesises a bare 503 when it cannot connect).
local KNOWN_STATUS = { [200] = true, [302] = true, [400] = true, [401] = true, [403] = true, [503] = true }

local STATUS_HINT = {
    [502] = " (bad or truncated answer)",
    [503] = " (idgate unreachable: connection refused or failed)",
    [504] = " (no answer within the timeout)",
}

-- Values of a header-table entry, in order, whether the list is 0- or 1-indexed; {} when absent.
local function values_of(entry)
    local out = {}
    if type(entry) == "string" then
        out[1] = entry
        return out
    end
    if type(entry) ~= "table" then
        return out
    end
    local i = 0
    if entry[0] == nil then
        i = 1
    end
    while entry[i] ~= nil do
        out[#out + 1] = tostring(entry[i])
        i = i + 1
    end
    return out
end

-- A header value is usable when it has no control characters (CR, LF, NUL, ...).
local function clean(value)
    return value:find("[%c]") == nil
end

-- Builds the httpclient header table {name = {v1, v2, ...}} for the idgate request.
local function build_request_headers(txn)
    local proto = "http"
    if txn.f:ssl_fc() == 1 or txn.f:ssl_fc() == true then
        proto = "https"
    end
    local hdrs = {
        ["X-Idgate-Method"] = { txn.sf:method() or "" },
        ["X-Idgate-Host"] = { txn.sf:req_hdr("host") or "" },
        ["X-Idgate-Path"] = { txn.sf:path() or "" },
        ["X-Idgate-Query"] = { txn.sf:query() or "" },
        ["X-Idgate-Source"] = { txn.sf:src() or "" },
        ["X-Idgate-Proto"] = { proto },
        -- HAProxy's request id (unique-id-format), logged by idgate on its audit line: joins the two logs
        ["X-Idgate-Request-Id"] = { txn.f:unique_id() or "" },
    }
    local client = txn.http:req_get_headers()
    for _, pair in ipairs(FORWARDED_HEADERS) do
        local vals = values_of(client[pair[1]])
        if #vals > 1 and pair[1] == "cookie" then
            -- one Cookie field holding every cookie (RFC 9113 §8.2.3), as the SPOE message reads it; haproxy.cfg
            -- already joins several lines, this keeps the Lua right on its own
            vals = { table.concat(vals, "; ") }
        end
        if #vals > 0 then
            hdrs[pair[2]] = vals
        end
    end
    -- httpclient adds "Accept: */*" and "User-Agent: HAProxy" when the request has none; an empty
    -- value suppresses that, so idgate never sees a value the client did not send (empty = absent).
    for _, name in ipairs(EMPTY_UNLESS_SENT) do
        if hdrs[name] == nil then
            hdrs[name] = { "" }
        end
    end
    return hdrs
end

-- Calls idgate and returns (variables table, nil) or (nil, short cause). Runs under pcall.
local function ask_idgate(txn, url, timeout_ms, dst)
    local hc = core.httpclient()
    local res = hc:get({ url = url, dst = dst, headers = build_request_headers(txn), timeout = timeout_ms })
    if type(res) ~= "table" then
        return nil, "no response"
    end
    local status = tonumber(res.status)
    if status == nil or status == 0 then
        return nil, "no answer (connection refused, reset or timed out)"
    end
    local headers = res.headers or {}
    if not KNOWN_STATUS[status] or (status == 503 and #values_of(headers["x-idgate-decision"]) == 0) then
        -- HAProxy's httpclient synthesises 503 when it cannot connect and 504 on timeout
        return nil, "unexpected status " .. tostring(status) .. (STATUS_HINT[status] or "")
    end
    local vars = { ["txn.idgate.status"] = tostring(math.floor(status)) }
    for _, pair in ipairs(ANSWER_VARS) do
        local vals = values_of(headers[pair[1]])
        if #vals > 1 then
            return nil, "duplicated answer header " .. pair[1]
        end
        local v = vals[1]
        if v ~= nil and v ~= "" then
            if not clean(v) then
                return nil, "control character in answer header " .. pair[1]
            end
            vars[pair[2]] = v
        end
    end
    local cookies = values_of(headers["set-cookie"])
    if #cookies > MAX_SET_COOKIES then
        return nil, "too many Set-Cookie headers in answer"
    end
    for i, v in ipairs(cookies) do
        if not clean(v) then
            return nil, "control character in answer header set-cookie"
        end
        vars["txn.idgate.set_cookie_" .. tostring(i - 1)] = v
    end
    local upstream = vars["txn.idgate.upstream"]
    if upstream ~= nil and not upstream:match("^[a-z0-9_]+$") then
        return nil, "invalid upstream name in answer"
    end
    local decision = vars["txn.idgate.decision"]
    if decision ~= nil and decision ~= "allow" and decision ~= "deny" then
        return nil, "invalid decision in answer"
    end
    return vars, nil
end

-- The action: args are the auth URL, the timeout in ms (strings from the config) and, optionally, the address
-- (ip:port) to connect to instead of the URL's host.
local function idgate_auth(txn, url, timeout_arg, dst)
    local timeout_ms = math.tointeger(tonumber(timeout_arg)) or 1000
    local ok, vars, cause = pcall(ask_idgate, txn, url, timeout_ms, dst)
    if not ok then
        cause = "lua error: " .. tostring(vars)
        vars = nil
    end
    if vars == nil then
        pcall(function()
            txn:Warning(string.format("idgate_auth: failing closed (%s %s from %s): %s",
                txn.sf:method() or "-", txn.sf:path() or "-", txn.sf:src() or "-", tostring(cause)))
        end)
        return
    end
    for name, value in pairs(vars) do
        txn:set_var(name, value)
    end
end

core.register_action("idgate_auth", { "http-req" }, idgate_auth, 2)
core.register_action("idgate_auth_at", { "http-req" }, idgate_auth, 3)
