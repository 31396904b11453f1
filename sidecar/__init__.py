"""Mentorix memory sidecar: mirrors the legacy JSON memory files into MongoDB."""

__version__ = "0.1.0"
