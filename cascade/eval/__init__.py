"""Evaluation: FID / IS / precision-recall, CLIP score, human-evaluation sheets and reports."""
