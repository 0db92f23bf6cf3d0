"""Argument checks of the ops, shared by the fused ops (before dispatch, and in their fake
kernels) and by the pure-PyTorch fallbacks in fastrobust.reference, so that every backend
rejects the same inputs with the same message. Every message names the argument, what was
expected and what was given. This package imports nothing but torch."""
