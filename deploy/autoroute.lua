-- Orthanc auto-routing: send every new radiograph (DX, CR, DR, RG) to the fracture node.
-- The node's results come back as Secondary Capture (modality OT) and Structured Report
-- (SR) instances, which this filter never sends out again, so there is no loop.
-- "fracture" is the name of the node in DicomModalities (see fracture.json).

local RADIOGRAPHS = { DX = true, CR = true, DR = true, RG = true }

function OnStoredInstance(instanceId, tags, metadata, origin)
  if RADIOGRAPHS[tags['Modality']] then
    -- Queued as an Orthanc job: retried by Orthanc if the node is down.
    SendToModality(instanceId, 'fracture')
  end
end
