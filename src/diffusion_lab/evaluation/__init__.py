"""Evaluation: CLIP scoring and guidance, FID/KID, class accuracy of samples."""
