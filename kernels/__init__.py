"""Triton kernels (packaged as args_engine.kernels), each with a plain-torch `_ref` beside it."""
