"""Code shared by every chaosbus service: bus naming, codec, rule model, logging."""

__version__ = "0.1.0"
