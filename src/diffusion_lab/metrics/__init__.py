"""Evaluation: CLIP scoring and guidance, FID/KID, class accuracy and inpainting metrics of samples."""

# the scores of an evaluation (eval.json) that are logged as scalars and compared between runs
EVAL_SCALARS = (
    "fid",
    "kid",
    "accuracy",
    "clip_similarity",
    "clip_family_accuracy",
    "inpaint_acc",
    "seconds_per_1000_samples",
    # a pattern checkpoint scored against the independent evaluation patterns
    "independent/fid",
    "independent/kid",
    "independent/inpaint_acc",
)
