"""Writing GGUF files: a model with one format per tensor (the allocation), or its unquantized reference."""
