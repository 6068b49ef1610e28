"""pytest plugin: --hyperclone-backend (filled by the conformance issue)."""
