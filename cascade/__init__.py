"""cascade: cascaded pixel-space diffusion (base 64x64 -> SR 256 -> SR 1024) on PyTorch Lightning."""

__version__ = "0.1.0"
