"""Training classifiers from scratch: the host, independent and reference models."""

from fingermarks.training.classifier import ClassifierModule
from fingermarks.training.fit import fit_classifier, load_classifier, save_classifier

__all__ = ["ClassifierModule", "fit_classifier", "load_classifier", "save_classifier"]
