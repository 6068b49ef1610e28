"""hyperclone_torch: the PyTorch backend (filled by the torch issue)."""
