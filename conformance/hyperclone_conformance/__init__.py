"""hyperclone_conformance: the shared suite (filled by the conformance issue)."""
