"""The device side of edge-export: load, verify and benchmark a bundle.

Needs numpy and the backends it runs (onnxruntime, openvino, ai-edge-litert: those of the bundle), never torch.
"""

from .backends.base import Runner
from .bench import bench
from .bundle import Bundle
from .compare import ParityError, compare
from .errors import UserError
from .runners import load
from .verify import verify

__all__ = ["Bundle", "ParityError", "Runner", "UserError", "bench", "compare", "load", "verify"]
