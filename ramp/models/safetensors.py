"""Hugging Face safetensors directories (config.json + *.safetensors + tokenizer.json), read offline into
the same `Model` a GGUF gives: llama.cpp tensor names, llama.cpp's q/k row order, and tokenizer metadata
that llama.cpp can load, so the reference GGUF written from it evaluates in llama.cpp.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ramp.errors import RampError
from ramp.files import file_sha256, text_sha256
from ramp.models.model import MetadataValue, Model, TensorSpec, check_finite, role_of

# Hugging Face class -> GGUF architecture whose weights need only renaming (and the q/k permutation).
_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}

_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# llama.cpp token types
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def gguf_name(hf_name: str) -> str | None:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    if (match := _LAYER.match(hf_name)) and match.group(2) in _LAYER_NAMES:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def permute_for_rope(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from Hugging Face's rotate-half layout to llama.cpp's adjacent-pair layout.

    llama.cpp's llama graph applies RoPE to pairs (2i, 2i+1) of each head; Hugging Face rotates dimension i
    with i + head_dim/2. Interleaving the two halves of each head makes both compute the same attention.
    """
    rows = weights.shape[0]
    return weights.reshape(n_heads, 2, rows // n_heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise RampError(f"{path.parent} has no {path.name}; a Hugging Face model directory needs {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RampError(f"{path} is not valid JSON ({exc}); re-download the model") from None
    if not isinstance(data, dict):
        raise RampError(f"{path} holds a JSON {type(data).__name__}, not the object {what} is; re-download the model")
    return data


# config.json entries the conversion cannot do without, and those it reads with a default
_REQUIRED_CONFIG = ("num_attention_heads", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
_OPTIONAL_CONFIG = ("num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps")


def _check_config(config: dict, path: Path) -> None:
    """A config.json cut short or edited by hand fails in one line naming the entry, not as a KeyError."""
    missing = [key for key in _REQUIRED_CONFIG if key not in config]
    if missing:
        raise RampError(f"{path} lacks {', '.join(missing)}; re-download the model (or save it again with save_pretrained)")
    for key in _REQUIRED_CONFIG + _OPTIONAL_CONFIG:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise RampError(f"{path}: {key} = {json.dumps(value)} is not a number; re-download the model")


def _pre_tokenizer_name(pre_tokenizer: dict | None, directory: Path) -> str:
    """llama.cpp's name for the regex split that runs before BPE; the wrong one silently changes tokens."""
    def is_gpt2_byte_level(step: dict) -> bool:
        return step.get("type") == "ByteLevel" and step.get("use_regex", True)

    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    if len(steps) == 1 and is_gpt2_byte_level(steps[0]):
        return "gpt-2"
    if (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and is_gpt2_byte_level(steps[1])
    ):
        return "smollm"  # GPT-2's split after putting every digit in its own piece
    raise RampError(
        f"{directory}/tokenizer.json splits text in a way ramp cannot name for llama.cpp; "
        "convert the model with llama.cpp's convert_hf_to_gguf.py and pass the GGUF"
    )


def _tokenizer_metadata(directory: Path, config: dict) -> dict[str, MetadataValue]:
    import gguf

    tokenizer = _read_json(directory / "tokenizer.json", "tokenizer.json (the fast tokenizer)")
    tokenizer_config = _read_json(directory / "tokenizer_config.json", "tokenizer_config.json") if (
        directory / "tokenizer_config.json"
    ).is_file() else {}
    model = tokenizer.get("model", {})
    if model.get("type") != "BPE":
        raise RampError(
            f"{directory}/tokenizer.json is a {model.get('type')!r} tokenizer; ramp reads byte-level BPE tokenizers "
            "only — convert the model with llama.cpp's convert_hf_to_gguf.py and pass the GGUF"
        )
    id_to_token = {index: token for token, index in model["vocab"].items()}
    special = set()
    for added in tokenizer.get("added_tokens", []):
        id_to_token[added["id"]] = added["content"]
        if added.get("special"):
            special.add(added["id"])
    vocab_size = int(config.get("vocab_size", len(id_to_token)))
    tokens, token_types = [], []
    for index in range(vocab_size):
        token = id_to_token.get(index)
        tokens.append(token if token is not None else f"[PAD{index}]")
        token_types.append(_CONTROL if index in special else (_USER_DEFINED if token is None else _NORMAL))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]

    def token_id(name: str, fallback_key: str) -> int | None:
        value = tokenizer_config.get(name)
        content = value.get("content") if isinstance(value, dict) else value
        if content is not None and content in model["vocab"]:
            return int(model["vocab"][content])
        found = next((a["id"] for a in tokenizer.get("added_tokens", []) if a["content"] == content), None)
        return found if found is not None else config.get(fallback_key)

    types = gguf.GGUFValueType
    metadata = {
        "tokenizer.ggml.model": MetadataValue("gpt2", types.STRING),
        "tokenizer.ggml.pre": MetadataValue(_pre_tokenizer_name(tokenizer.get("pre_tokenizer"), directory), types.STRING),
        "tokenizer.ggml.tokens": MetadataValue(tokens, types.ARRAY, types.STRING),
        "tokenizer.ggml.token_type": MetadataValue(token_types, types.ARRAY, types.INT32),
        "tokenizer.ggml.merges": MetadataValue(merges, types.ARRAY, types.STRING),
        "tokenizer.ggml.add_bos_token": MetadataValue(bool(tokenizer_config.get("add_bos_token", False)), types.BOOL),
    }
    for key, name, fallback in (("bos", "bos_token", "bos_token_id"), ("eos", "eos_token", "eos_token_id")):
        if (index := token_id(name, fallback)) is not None:
            metadata[f"tokenizer.ggml.{key}_token_id"] = MetadataValue(int(index), types.UINT32)
    return metadata


def load_safetensors_dir(directory: str | Path) -> Model:
    import gguf
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    config = _read_json(directory / "config.json", "config.json")
    hf_arch = (config.get("architectures") or ["?"])[0]
    if hf_arch not in _ARCHITECTURES:
        raise RampError(
            f"unsupported architecture {hf_arch!r} in {directory}/config.json; ramp reads {', '.join(_ARCHITECTURES)} "
            "directories (convert others with llama.cpp's convert_hf_to_gguf.py and pass the GGUF)"
        )
    arch = _ARCHITECTURES[hf_arch]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise RampError(f"{directory} has no *.safetensors files; pass a directory saved with safetensors")
    _check_config(config, directory / "config.json")
    n_heads = int(config["num_attention_heads"])
    n_kv_heads = int(config.get("num_key_value_heads", n_heads))
    n_embd = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or n_embd // n_heads)

    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            loaded = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise RampError(f"{file} is not a readable safetensors file ({exc}); re-download it") from None
        for hf_name, weights in loaded.items():
            name = gguf_name(hf_name)
            if name is None:
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed from rope_theta by every runtime
                raise RampError(f"tensor {hf_name!r} in {file} has no llama.cpp name ramp knows; is this a {hf_arch}?")
            weights = np.asarray(weights, dtype=np.float32)
            check_finite(hf_name, weights, file)
            if name.endswith("attn_q.weight"):
                weights = permute_for_rope(weights, n_heads)
            elif name.endswith("attn_k.weight"):
                weights = permute_for_rope(weights, n_kv_heads)
            tensors[name] = np.ascontiguousarray(weights)
    if config.get("tie_word_embeddings") and "output.weight" in tensors:
        # llama.cpp reuses token_embd when output is absent; keeping one copy keeps the file size honest
        del tensors["output.weight"]

    types = gguf.GGUFValueType
    n_blocks = int(config["num_hidden_layers"])
    metadata = {
        "general.architecture": MetadataValue(arch, types.STRING),
        "general.name": MetadataValue(directory.name, types.STRING),
        f"{arch}.block_count": MetadataValue(n_blocks, types.UINT32),
        f"{arch}.context_length": MetadataValue(int(config.get("max_position_embeddings", 2048)), types.UINT32),
        f"{arch}.embedding_length": MetadataValue(n_embd, types.UINT32),
        f"{arch}.feed_forward_length": MetadataValue(int(config["intermediate_size"]), types.UINT32),
        f"{arch}.attention.head_count": MetadataValue(n_heads, types.UINT32),
        f"{arch}.attention.head_count_kv": MetadataValue(n_kv_heads, types.UINT32),
        f"{arch}.rope.freq_base": MetadataValue(float(config.get("rope_theta", 10000.0)), types.FLOAT32),
        f"{arch}.rope.dimension_count": MetadataValue(head_dim, types.UINT32),
        f"{arch}.attention.layer_norm_rms_epsilon": MetadataValue(float(config.get("rms_norm_eps", 1e-5)), types.FLOAT32),
        f"{arch}.vocab_size": MetadataValue(int(config["vocab_size"]), types.UINT32),
    }
    metadata.update(_tokenizer_metadata(directory, config))

    quantizable = []
    for name, weights in tensors.items():
        if (role := role_of(name)) is not None and weights.ndim == 2:
            quantizable.append(TensorSpec(name, tuple(int(d) for d in weights.shape), role[0], role[1]))
    order = {"token_embd": -1, "output": n_blocks}
    quantizable.sort(key=lambda spec: (order.get(spec.role, spec.block), spec.name))
    digest = text_sha256("".join(file_sha256(file) for file in files))
    return Model(arch, n_blocks, tensors, quantizable, metadata, directory, digest)
