"""Foundations every other package stands on: the error family, atomic files and folder
locks, settings as dataclass fields, device and runtime, number and table formatting, the
figures, progress lines and the one guard for optional packages."""
