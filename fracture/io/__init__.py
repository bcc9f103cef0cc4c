"""Files and images: atomic writes and JSON, image loading and validation, file walking.

The bottom layer: it imports nothing from the rest of fracture except :mod:`fracture.config`.
"""
