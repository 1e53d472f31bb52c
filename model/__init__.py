"""CGD model: backbones, global descriptors, checkpoints, preprocessing, training and evaluation.

Knows nothing of HTTP or of the gallery index.
"""

from model.backbones import UnknownBackboneError, create_backbone, list_backbones, register_backbone
from model.cgd import CGD, CGDOutput, create_cgd
from model.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, save_checkpoint
from model.config import DESCRIPTOR_CONFIGS, CGDConfig, ConfigError, Preprocessing
from model.default import default_model
from model.embedder import Embedder

__all__ = [
    "CGD",
    "DESCRIPTOR_CONFIGS",
    "CGDConfig",
    "CGDOutput",
    "CheckpointError",
    "ConfigError",
    "Embedder",
    "LoadedCheckpoint",
    "Preprocessing",
    "UnknownBackboneError",
    "create_backbone",
    "create_cgd",
    "default_model",
    "list_backbones",
    "load_checkpoint",
    "register_backbone",
    "save_checkpoint",
]
