"""streamseg: real-time video segmentation server on SAM 2."""

__version__ = "0.1.0"
