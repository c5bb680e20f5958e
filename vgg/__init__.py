"""VGG (Simonyan & Zisserman, ICLR 2015): the paper's networks, recipe and evaluation."""

from vgg.model import CONFIGS, INITS, VERSIONS, VGG, build_vgg

__all__ = ["CONFIGS", "INITS", "VERSIONS", "VGG", "build_vgg"]
