"""Evaluating quantized files through llama.cpp: perplexity, KLD and top-1 against the reference, llama.cpp's
own presets to compare against, its referee, the source-grid share, the Pareto plot, and the check of damage
estimates against the measured table."""
