"""hyperclone_jax: the JAX backend of hyperclone (in progress)."""
