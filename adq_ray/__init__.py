"""adq-ray: Adaptive Dataset Quantization (ADQ) and Dataset Quantization (DQ) as a distributed Ray job."""

__version__ = "0.1.0"
