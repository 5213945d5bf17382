"""The command line: ``resnetlab`` parses arguments, calls the library and prints."""

from .commands import main

__all__ = ["main"]
