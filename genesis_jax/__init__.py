"""genesis-jax: Models Genesis self-supervised pre-training in JAX/Flax."""

__version__ = "0.2.0"
