-- The ceiling's POST /ingest: the same body as ingest.lua.
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
local n = 0
function request()
  n = n + 1
  local body = string.format(
    '{"vehicleId":"hb-%d","soc":%.1f,"kwhDeliveredDc":0.5,"batteryTemp":30.5,"timestamp":"2026-12-06T12:00:00.000Z"}',
    n % 500, 20 + (n % 80))
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
