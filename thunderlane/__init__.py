"""Thunder lane: prove state before spending compute on bounded MLX LoRA windows."""

__version__ = "0.1.0"
