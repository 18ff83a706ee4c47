"""Evaluation: generation for scoring, ROUGE with intervals, reports, the decoding options and the
CTranslate2 decoder shared with the server."""
