"""ramp chooses a GGML format per tensor of an LLM and writes the mixed-precision GGUF; its packages are the
stages of that flow, in order: `models` (reading models and texts), `kernels` (GGML formats), `measure`,
`allocate`, `agent` (with `envs`), `export`, `evaluate`, `job`, and the command line (`cli`, `commands`).
A stage imports only from itself and the stages before it (tests/test_layout.py)."""
