-- GET /v1/analytics/performance/{id} of a random vehicle (its last 24 h).
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
function request()
  return wrk.format("GET", wrk.path .. common.vehicle())
end
