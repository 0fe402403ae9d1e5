"""Evaluation: CLIP scoring and guidance, FID/KID, class accuracy and inpainting metrics of samples."""
