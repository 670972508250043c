"""Perceptual fingerprints of images: loading untrusted files, hashing, and near-match search.

A plain library with no Django, Celery or database imports: bytes or images in,
fingerprints and distances out.
"""
