"""hyperclone_mlx: the MLX backend of hyperclone (in progress)."""
