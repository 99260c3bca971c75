"""gliomaseg: glioma segmentation in multimodal brain MRI with ImageNet-pretrained U-Nets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gliomaseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
