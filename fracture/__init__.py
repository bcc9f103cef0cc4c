"""fracture: a ResNet-50 bone-fracture detector for radiographs.

Importing the package is cheap: TensorFlow loads only when a model is built.
Research and education demo, not a medical device.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
