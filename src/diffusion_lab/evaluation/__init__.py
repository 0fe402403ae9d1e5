"""Evaluation: metrics and scoring of samples."""
