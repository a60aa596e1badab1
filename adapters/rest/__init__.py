"""The REST HTTP-API (JSON under /api/v1) for device lifecycle and administration."""

from adapters.rest.app import setup_rest

__all__ = ["setup_rest"]
