"""darkbloom: an open, self-hostable network for private AI inference."""

__version__ = "0.1.0"
__all__ = ["__version__"]
