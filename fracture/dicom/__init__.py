"""Hospital integration: receive studies over DICOM, score them, send DICOM results back.

Layers: :mod:`.results` turns predictions into DICOM objects (a Secondary
Capture per image, a Structured Report per study), :mod:`.spool` keeps every
received instance and every result on disk until it is delivered, :mod:`.node`
is the C-STORE service, and :mod:`.web` is the DICOMweb route. The package sits
above inference and below the CLI and the dashboard.
"""
