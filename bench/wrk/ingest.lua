-- POST /v1/ingest/vehicle: one new reading per request (a device and timestamp never sent
-- before in this run), so every request is a real insert answered after its commit.
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
local n, tid, start = 0, 0, 0
function init(args)
  tid = tonumber(wrk.thread:get("tid")) or 0
  start = os.time() - 60
end
function request()
  n = n + 1
  local device = string.format("hb-%s-%s-%d-%d", common.run, common.case, tid, n % 500)
  local ms = n * 3
  local ts = os.date("!%Y-%m-%dT%H:%M:%S", start + math.floor(ms / 1000)) .. string.format(".%03dZ", ms % 1000)
  local body = string.format(
    '{"vehicleId":"%s","soc":%.1f,"kwhDeliveredDc":0.5,"batteryTemp":30.5,"timestamp":"%s"}',
    device, 20 + (n % 80), ts)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
