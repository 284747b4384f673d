"""tppo: Truncated Proximal Policy Optimization for reasoning language models."""

__version__ = "0.1.0"
