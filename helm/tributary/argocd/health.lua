-- Argo CD health check for Tributary's Cluster, Topic and MirrorLink.
-- Reads the kstatus conditions every Tributary object reports:
--   stale status (observedGeneration behind) -> Progressing
--   Stalled=True                             -> Degraded (a person must act)
--   MirrorLink with spec.paused              -> Suspended
--   Ready=True                               -> Healthy
--   anything else                            -> Progressing
hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tributary operator to report status"
  return hs
end
if obj.status.observedGeneration == nil or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tributary operator to observe the latest spec"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Stalled" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.reason .. ": " .. (c.message or "")
    return hs
  end
end
if obj.kind == "MirrorLink" and obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "Mirroring is paused (spec.paused)"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    if c.status == "True" then
      hs.status = "Healthy"
    else
      hs.status = "Progressing"
    end
    hs.message = c.reason .. ": " .. (c.message or "")
    return hs
  end
end
hs.status = "Progressing"
hs.message = "No Ready condition yet"
return hs
