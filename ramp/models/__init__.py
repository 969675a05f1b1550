"""Everything ramp reads in: model files (GGUF, safetensors directories, the models known by name), their
tokenizers, and the texts calibration and evaluation read."""
