-- GET /v1/status/vehicles?limit=100 from a random cursor: a page of the current-state list.
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
function request()
  return wrk.format("GET", wrk.path .. "?limit=100&cursor=" .. common.vehicle())
end
