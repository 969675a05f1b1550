"""Measuring a model: its torch forward, the calibration windows, the KLD oracle and the damage tables built on
it (measured or estimated), importance matrices, per-tensor embeddings, Scale Folding and the format ladder."""
