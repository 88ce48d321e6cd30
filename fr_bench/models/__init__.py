"""Face-recognition backbones and model loading."""

from .iresnet import IResNet, iresnet
from .loader import load_fr_model, load_state_dict

__all__ = ["IResNet", "iresnet", "load_fr_model", "load_state_dict"]
