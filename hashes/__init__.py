"""Perceptual fingerprints of images: loading untrusted files, hashing, and near-match search.

A plain library with no Django, Celery or database imports: bytes or images in,
fingerprints and distances out. What other code may use is named here.
"""

from hashes.algorithms import (
    ALGORITHMS,
    Fingerprint,
    algorithm_versions,
    fingerprint_frames,
    fingerprint_image,
    hamming,
    parse_hash,
)
from hashes.detect import (
    BannedPicture,
    DetectConfig,
    Detection,
    Detector,
    Probe,
    Stage,
    probes,
    reference_features,
    use_threads,
)
from hashes.errors import ImageError
from hashes.loading import SNIFF_BYTES, LoadedImage, describe_content, image_kind, load_image
from hashes.local import LocalFeatures
from hashes.matching import DEFAULT_RULE_CONFIG, MatchRule, is_low_detail

__all__ = [
    "ALGORITHMS",
    "DEFAULT_RULE_CONFIG",
    "SNIFF_BYTES",
    "BannedPicture",
    "DetectConfig",
    "Detection",
    "Detector",
    "Fingerprint",
    "ImageError",
    "LoadedImage",
    "LocalFeatures",
    "MatchRule",
    "Probe",
    "Stage",
    "algorithm_versions",
    "describe_content",
    "fingerprint_frames",
    "fingerprint_image",
    "hamming",
    "image_kind",
    "is_low_detail",
    "load_image",
    "parse_hash",
    "probes",
    "reference_features",
    "use_threads",
]
