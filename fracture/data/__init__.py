"""Datasets: records and labels, folder layouts (folders, FracAtlas, MURA), splits, augmentation,
synthetic phantoms and the FracAtlas import.

Built on :mod:`fracture.io`; knows nothing about models.
"""
