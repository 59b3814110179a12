"""sendguard: the safety gateway every AI agent sends its email through."""

__version__ = "0.1.0"
