"""A tiny random llama that llama.cpp really loads: 2 blocks, 256-wide, with the embedded SmolLM2 model's
real tokenizer (its GGUF tokenizer metadata copied verbatim), so tokenization, windows and generation run
through llama.cpp exactly as for a real model, in seconds (tests/conftest.py makes it a fixture).

The FFN width 320 is not a multiple of 256, so ffn_down exercises llama.cpp's K-quant fallback.
"""
from __future__ import annotations

import gguf
import numpy as np

from ramp.models.model import MetadataValue, Model, TensorSpec, role_of
from ramp.models.embedded import default_model_path

N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_BLOCKS = 256, 320, 4, 2, 2


def tokenizer_metadata() -> dict[str, MetadataValue]:
    reader = gguf.GGUFReader(default_model_path())
    return {
        key: MetadataValue(field.contents(), field.types[0], field.types[1] if len(field.types) > 1 else None)
        for key, field in reader.fields.items()
        if key.startswith("tokenizer.")
    }


def tiny_llama(seed: int = 0, add_bos: bool | None = None, arch: str = "llama") -> Model:
    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    tokenizer = tokenizer_metadata()
    if add_bos is not None:
        tokenizer["tokenizer.ggml.add_bos_token"] = MetadataValue(add_bos, gguf.GGUFValueType.BOOL)
    n_vocab = len(tokenizer["tokenizer.ggml.tokens"].value)
    metadata = {
        "general.architecture": MetadataValue(arch, gguf.GGUFValueType.STRING),
        "general.name": MetadataValue("ramp tiny test llama", gguf.GGUFValueType.STRING),
        f"{arch}.block_count": MetadataValue(N_BLOCKS, u32),
        f"{arch}.context_length": MetadataValue(2048, u32),
        f"{arch}.embedding_length": MetadataValue(N_EMBD, u32),
        f"{arch}.feed_forward_length": MetadataValue(N_FF, u32),
        f"{arch}.attention.head_count": MetadataValue(N_HEAD, u32),
        f"{arch}.attention.head_count_kv": MetadataValue(N_HEAD_KV, u32),
        f"{arch}.rope.freq_base": MetadataValue(10000.0, f32),
        f"{arch}.attention.layer_norm_rms_epsilon": MetadataValue(1e-5, f32),
        f"{arch}.rope.dimension_count": MetadataValue(N_EMBD // N_HEAD, u32),
        "general.file_type": MetadataValue(0, u32),
        **tokenizer,
    }
    rng = np.random.default_rng(seed)
    kv = N_EMBD // N_HEAD * N_HEAD_KV
    shapes = {"token_embd.weight": (n_vocab, N_EMBD)}
    for b in range(N_BLOCKS):
        shapes |= {
            f"blk.{b}.attn_norm.weight": (N_EMBD,), f"blk.{b}.attn_q.weight": (N_EMBD, N_EMBD),
            f"blk.{b}.attn_k.weight": (kv, N_EMBD), f"blk.{b}.attn_v.weight": (kv, N_EMBD),
            f"blk.{b}.attn_output.weight": (N_EMBD, N_EMBD), f"blk.{b}.ffn_norm.weight": (N_EMBD,),
            f"blk.{b}.ffn_gate.weight": (N_FF, N_EMBD), f"blk.{b}.ffn_up.weight": (N_FF, N_EMBD),
            f"blk.{b}.ffn_down.weight": (N_EMBD, N_FF),
        }
    shapes["output_norm.weight"] = (N_EMBD,)
    tensors = {
        name: (np.ones(shape, np.float32) if len(shape) == 1 else rng.normal(0, 0.05, shape).astype(np.float32))
        for name, shape in shapes.items()
    }
    quantizable = [
        TensorSpec(name, shape, *role_of(name)) for name, shape in shapes.items() if len(shape) == 2
    ]
    return Model(arch, N_BLOCKS, tensors, quantizable, metadata, sha256=f"tiny-{seed}-{add_bos}-{arch}")
