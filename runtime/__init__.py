"""Executors (NumPy, CuPy), kernels, optimizers and the training loop."""
