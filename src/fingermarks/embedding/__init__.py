"""Watermark embedding (Algorithm 1): module, dynamic-ratio callback, DeepFool neighbours."""

from fingermarks.embedding.deepfool import deepfool
from fingermarks.embedding.dynamic_ratio import DynamicRatio, plateaued, stop_reason
from fingermarks.embedding.module import EmbeddingData, EmbeddingModule, embedding_outcome

__all__ = ["DynamicRatio", "EmbeddingData", "EmbeddingModule", "deepfool", "embedding_outcome", "plateaued", "stop_reason"]
