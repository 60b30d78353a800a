-- Shared by the scripts: thread numbering and the environment of bench/http.py.
local M = {}
M.devices = tonumber(os.getenv("DEVICES") or "1000")
M.run = os.getenv("RUN") or "0"
M.case = (os.getenv("CASE") or "c") .. "p" .. (os.getenv("WRK_PART") or "0")
local counter = 0
function M.setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function M.vehicle()
  return string.format("vehicle-%05d", math.random(1, M.devices))
end
return M
