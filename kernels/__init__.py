"""Triton kernels of scalegan, installed as ``scalegan.kernels`` (never as a bare ``kernels``)."""
