-- The ceiling's GET /status/{id}: the same paths as status.lua.
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local common = require("common")
setup = common.setup
function request()
  return wrk.format("GET", wrk.path .. common.vehicle())
end
