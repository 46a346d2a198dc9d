"""The web console at /ui (pages, static files, JSON API). Imported only when /ui is first used."""

from .handler import Console

__all__ = ["Console"]
