"""FingerMarks: black-box multi-bit watermarking for DNN ownership and leak tracing."""

__version__ = "0.1.0"
