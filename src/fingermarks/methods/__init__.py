"""Watermark and fingerprint schemes behind one keygen / embed interface."""

from fingermarks.methods.base import WatermarkMethod
from fingermarks.methods.fingermarks import FingerMarks
from fingermarks.methods.ipguard import IPGuard
from fingermarks.methods.mbw import MBW

__all__ = ["FingerMarks", "IPGuard", "MBW", "WatermarkMethod"]
