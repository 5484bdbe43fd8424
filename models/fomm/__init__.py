"""First Order Motion Model (vox-256): networks compatible with the official checkpoint, and the
real-time split (per avatar / per calibration / per frame) used by the FOMM engine and `export`."""
from models.fomm.checkpoint import CheckpointError, load_fomm, save_random_checkpoint
from models.fomm.generator import OcclusionAwareGenerator
from models.fomm.keypoint_detector import KPDetector

__all__ = ["CheckpointError", "KPDetector", "OcclusionAwareGenerator", "load_fomm", "save_random_checkpoint"]
