"""Evaluation: one faiss search gives Recall@K, MAP@R, R-Precision (and NMI); per-run metrics."""
