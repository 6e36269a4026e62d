-- Argo CD health check for rft.dev/RFTJob.
--   Succeeded -> Healthy; Pending, Running -> Progressing; Failed -> Degraded; Suspended -> Suspended.
-- A status the operator wrote for an older spec (observedGeneration < generation) says nothing about the
-- current one, so it reads as Progressing until the operator catches up; so does spec.suspend=true before
-- the operator has removed the pods.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function with_progress(text, status)
  local p = status.progress
  if p ~= nil and p.step ~= nil then
    local where = "step " .. string.format("%d", p.step)
    if p.totalSteps ~= nil then
      where = where .. "/" .. string.format("%d", p.totalSteps)
    end
    if text == nil or text == "" then
      return where
    end
    return text .. " (" .. where .. ")"
  end
  return text or ""
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the job"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local phase = status.phase
local message = status.message
if message == nil or message == "" then
  message = status.reason or phase
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = with_progress(message, status)
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  if obj.spec ~= nil and obj.spec.suspend == true then
    message = "Suspending"
  end
  local stalled = condition(status, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    -- still Progressing (the job may recover), but the message says why nothing moves
    hs.message = "Stalled: " .. (stalled.message or stalled.reason or "no progress")
  else
    hs.message = with_progress(message, status)
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
