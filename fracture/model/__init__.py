"""The classifier and where it lives on disk: the network, the model-folder format, the model card,
the registry of versions (ACTIVE, promote, rollback) and the ImageNet weights.
"""
