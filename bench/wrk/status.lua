-- GET /v1/status/vehicle/{id} of a random vehicle of the loaded fleet.
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
function request()
  return wrk.format("GET", wrk.path .. common.vehicle())
end
