"""Serving: letterbox preprocessing, the batched inference engine, Grad-CAM, the out-of-distribution
gate and the :class:`Predictor`.
"""
