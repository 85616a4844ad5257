"""Watermark and fingerprint schemes behind one keygen / embed interface."""

from fingermarks.methods.base import WatermarkMethod
from fingermarks.methods.fingermarks import FingerMarks

__all__ = ["FingerMarks", "WatermarkMethod"]
