"""netdsl: a declarative graph compiler and visual network builder for neural networks."""

__version__ = "0.1.0"
