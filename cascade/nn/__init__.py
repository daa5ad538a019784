"""Networks: the conditional UNet of every stage and the frozen text encoders.

    from cascade.nn import UNet, UNetConfig, TextEncoder, TextEncoding

`cascade.nn.text` imports transformers only when an encoder is loaded, so importing the UNet
stays cheap.
"""

from cascade.nn.config import UNetConfig
from cascade.nn.text import TextEncoder, TextEncoderNotFoundError, TextEncoding
from cascade.nn.unet import UNet, compile_static

__all__ = ["TextEncoder", "TextEncoderNotFoundError", "TextEncoding", "UNet", "UNetConfig", "compile_static"]
