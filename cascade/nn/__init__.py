"""Networks: the conditional UNet of every stage and the frozen text encoders.

    from cascade.nn import UNet, UNetConfig, TextEncoder, TextEncoding

`cascade.nn.text` imports transformers only when an encoder is loaded, so importing the UNet
stays cheap.
"""

from .config import UNetConfig
from .text import TextEncoder, TextEncoderNotFoundError, TextEncoding
from .unet import UNet, compile_static, count_parameters

__all__ = ["TextEncoder", "TextEncoderNotFoundError", "TextEncoding", "UNet", "UNetConfig", "compile_static", "count_parameters"]
