"""relulab's version: one place, read by the package face and by provenance."""
__version__ = "0.1.0"
