"""A torch forward pass of llama-family models and Gemma 3 over a `Model`'s float32 tensors, in GGUF conventions.

GGUF conventions that differ from Hugging Face's: the llama converter permutes the rows of attn_q/attn_k
so that RoPE rotates adjacent pairs (2i, 2i+1), llama.cpp's "norm" rope type (qwen2/qwen3 keep the
"neox" halves layout); weights are (out_features, in_features); a model without `output.weight` ties
its output projection to `token_embd.weight`, so replacing token_embd replaces both uses, as in llama.cpp;
Gemma's GGUF norm weights already hold the 1 + w that Gemma's RMSNorm multiplies by (the converter adds it).

Gemma 3 is the llama block with llama.cpp's gemma3 graph differences (src/models/gemma3.cpp): embeddings
scaled by sqrt(n_embd), per-head q/k RMSNorm, RMSNorm of the attention and FFN outputs before each residual
add, a GELU-tanh gated FFN, and sliding-window layers with their own rope base between global layers.

Any quantizable weight can be swapped for another tensor per call (`overrides`), without copying the
model, and `capture` sees the input of every linear: that is all quantized evaluation, profiling,
sensitivity and Scale Folding need.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from ramp.errors import RampError
from ramp.models.model import Model
from ramp.models.store import row_bands, tensor_rows

# llama.cpp's rope type per architecture (llama_model_rope_type): "norm" rotates pairs (2i, 2i+1),
# "neox" rotates (i, i + d/2).
_ROPE_TYPE = {"llama": "norm", "mistral": "norm", "qwen2": "neox", "qwen3": "neox", "gemma3": "neox"}
SUPPORTED_ARCHITECTURES = tuple(_ROPE_TYPE)
# llama.cpp's defaults for gemma3 files without the keys (llama_model_gemma3::load_arch_hparams and
# llama_hparams): every 6th layer is global, the others slide; sliding layers rope with base 10000.
_GEMMA3_SWA_PATTERN = 6
_GEMMA3_SWA_ROPE_BASE = 10000.0

Overrides = Mapping[str, torch.Tensor]
# capture(tensor name, input activations [batch, tokens, in_features]) for every linear; the tied or
# untied output projection reports as "output.weight".
Capture = Callable[[str, torch.Tensor], None]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # ggml's CPU GELU looks the value up in a float16 table; computing it in float32 instead leaves Gemma 3
    # 270M's logits within 2.5e-4 (relative norm) of llama.cpp's vs 1.9e-4 with the table emulated, so
    # the exact function is kept.
    return torch.nn.functional.gelu(x, approximate="tanh")


@dataclass(frozen=True)
class _LayerAttention:
    """What differs between a model's attention layers: Gemma 3 alternates sliding and global ones."""

    rope_base: float
    rope_scale: float
    window: int | None  # a query sees keys fewer than `window` positions back; None: the whole causal past


def _gemma3_sliding_layers(model: Model) -> list[bool]:
    """llama.cpp's is_swa per layer: an explicit per-layer array, or a period n whose last layer is global."""
    pattern = model.hparam("attention.sliding_window_pattern", _GEMMA3_SWA_PATTERN)
    if isinstance(pattern, list):
        return [bool(p) for p in pattern[: model.n_blocks]]
    period = int(pattern)
    return [period == 0 or index % period < period - 1 for index in range(model.n_blocks)]


def check_device(device: str | torch.device) -> torch.device:
    """A torch device this machine has: `--device cuda:7` on a machine without it is one error line, not an
    assertion deep inside torch."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise RampError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            have = f"cuda:0..cuda:{count - 1}" if count else "no CUDA device"
            raise RampError(f"--device {device} is not on this machine ({have}); use one it has, or cpu")
    elif resolved.type != "cpu":
        try:  # other backends (mps, xpu, ...) say whether they work by trying
            torch.empty(1, device=resolved)
        except (RuntimeError, AssertionError, ValueError):
            raise RampError(f"--device {device} is not available on this machine; use cpu") from None
    return resolved


class DeviceWeights(Mapping[str, torch.Tensor]):
    """The model's tensors as torch tensors on `device`, made when used: on the CPU views of the model's arrays (no
    copy), so a streamed model's forward holds only what its store keeps; on an accelerator each tensor is copied
    once and kept there (device memory, not the host's)."""

    def __init__(self, model: Model, device: torch.device) -> None:
        self.tensors = model.tensors
        self.device = device
        self._on_device: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if (found := self._on_device.get(name)) is not None:
            return found
        tensor = self.convert(self.tensors[name])
        if self.device.type != "cpu":
            self._on_device[name] = tensor
        return tensor

    def convert(self, array: np.ndarray) -> torch.Tensor:
        """A float32 array as a tensor on the device: a view on the CPU."""
        with warnings.catch_warnings():
            # stored arrays are read-only and shared; the forward never writes to its weights
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class Forward:
    """The model's forward pass over its tensors, fetched as each block runs (`DeviceWeights`)."""

    def __init__(self, model: Model, device: str | torch.device = "cpu") -> None:
        if model.arch not in _ROPE_TYPE:
            raise RampError(
                f"the torch forward supports {', '.join(SUPPORTED_ARCHITECTURES)}, not {model.arch!r}; "
                "profile a model of a supported architecture"
            )
        self.model = model
        self.device = check_device(device)
        self.weights = DeviceWeights(model, self.device)
        self.n_blocks = model.n_blocks
        self.n_head = int(model.hparam("attention.head_count"))
        self.n_head_kv = int(model.hparam("attention.head_count_kv", self.n_head))
        self.eps = float(model.hparam("attention.layer_norm_rms_epsilon"))
        embd = int(model.hparam("embedding_length"))
        self.head_dim = int(model.hparam("attention.key_length", embd // self.n_head))
        self.rope_dims = int(model.hparam("rope.dimension_count", self.head_dim))
        self.rope_neox = _ROPE_TYPE[model.arch] == "neox"
        scaling = model.hparam("rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise RampError(f"rope scaling {scaling!r} is not supported by the torch forward; use a model without it")
        rope_scale = 1.0 / float(model.hparam("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
        global_layer = _LayerAttention(float(model.hparam("rope.freq_base", 10000.0)), rope_scale, None)
        self.layers = [global_layer] * self.n_blocks
        self.attention_scale = 1.0 / self.head_dim**0.5
        self.embed_scale = 1.0
        self.ffn_activation: Callable[[torch.Tensor], torch.Tensor] = torch.nn.functional.silu
        self.logit_softcap = 0.0
        if model.arch == "gemma3":
            self._configure_gemma3(model, global_layer, embd)
        self.output_name = "output.weight" if "output.weight" in self.weights else "token_embd.weight"

    def _configure_gemma3(self, model: Model, global_layer: _LayerAttention, embd: int) -> None:
        """llama.cpp's gemma3 hyper-parameters (llama_model_gemma3::load_arch_hparams)."""
        window = int(model.hparam("attention.sliding_window", 0))
        if window > 0:
            # sliding layers ignore the file's rope scaling (llama.cpp's rope_freq_scale_train_swa stays 1)
            sliding = _LayerAttention(float(model.hparam("rope.freq_base_swa", _GEMMA3_SWA_ROPE_BASE)), 1.0, window)
            self.layers = [sliding if is_swa else global_layer for is_swa in _gemma3_sliding_layers(model)]
        if self.n_blocks == 62:  # Gemma 3 27B scales by the model width per head, not the head size
            self.attention_scale = 1.0 / (embd / self.n_head) ** 0.5
        self.embed_scale = embd**0.5
        self.ffn_activation = _gelu_tanh
        self.logit_softcap = float(model.hparam("final_logit_softcapping", 0.0))

    def weight(self, name: str, overrides: Overrides | None) -> torch.Tensor:
        if overrides is not None and name in overrides:
            return overrides[name]
        return self.weights[name]

    def _linear(self, x: torch.Tensor, name: str, overrides: Overrides | None, capture: Capture | None) -> torch.Tensor:
        if capture is not None:
            capture(name, x)
        y = x @ self.weight(name, overrides).T
        bias = self.weights.get(name[: -len("weight")] + "bias")
        return y if bias is None else y + bias

    def _rope_tables(self, n_tokens: int, layer: _LayerAttention) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = layer.rope_base ** (-torch.arange(0, self.rope_dims, 2, dtype=torch.float64) / self.rope_dims)
        angles = torch.arange(n_tokens, dtype=torch.float64)[:, None] * layer.rope_scale * inv_freq[None, :]
        return angles.cos().float().to(self.device), angles.sin().float().to(self.device)

    def _window_mask(self, n_tokens: int, window: int | None) -> torch.Tensor | None:
        """Boolean [tokens, tokens] mask (True: attend) for a sliding layer; None where plain causal suffices."""
        if window is None or n_tokens <= window:
            return None
        distance = torch.arange(n_tokens, device=self.device)[:, None] - torch.arange(n_tokens, device=self.device)[None, :]
        return (distance >= 0) & (distance < window)

    def _post_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Gemma's RMSNorm of a sub-layer's output before the residual add; identity for models without it."""
        weight = self.weights.get(name)
        return x if weight is None else _rms_norm(x, weight, self.eps)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x: [batch, heads, tokens, head_dim]; only the first rope_dims dimensions rotate.
        rot, rest = x[..., : self.rope_dims], x[..., self.rope_dims :]
        if self.rope_neox:
            x0, x1 = rot[..., : self.rope_dims // 2], rot[..., self.rope_dims // 2 :]
            rotated = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        else:
            x0, x1 = rot[..., 0::2], rot[..., 1::2]
            rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        return torch.cat((rotated, rest), dim=-1)

    def bands(self, name: str, overrides: Overrides | None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows) of a weight in row bands: one band where it is in memory anyway, several where a
        streamed model keeps it nowhere (a 7B's 2 GB embedding and output), so it is never whole."""
        if overrides is not None and name in overrides:
            yield 0, overrides[name]
            return
        tensors = self.model.tensors
        for start, stop in row_bands(tensors, name):
            yield start, self.weights.convert(tensor_rows(tensors, name, start, stop))

    def embed(self, tokens: torch.Tensor, overrides: Overrides | None = None) -> torch.Tensor:
        """Hidden states [batch, tokens, embd] entering block 0."""
        flat = tokens.reshape(-1)
        h = torch.empty((flat.numel(), self.model.shape("token_embd.weight")[1]), device=self.device)
        for start, rows in self.bands("token_embd.weight", overrides):
            inside = (flat >= start) & (flat < start + rows.shape[0])
            h[inside] = rows[flat[inside] - start]
        return h.reshape(*tokens.shape, -1) * self.embed_scale

    def block(
        self, index: int, h: torch.Tensor, overrides: Overrides | None = None, capture: Capture | None = None
    ) -> torch.Tensor:
        """Hidden states leaving block `index`, given those entering it."""
        prefix = f"blk.{index}."
        w = self.weights
        batch, n_tokens, _ = h.shape
        x = _rms_norm(h, w[prefix + "attn_norm.weight"], self.eps)
        q = self._linear(x, prefix + "attn_q.weight", overrides, capture)
        k = self._linear(x, prefix + "attn_k.weight", overrides, capture)
        v = self._linear(x, prefix + "attn_v.weight", overrides, capture)
        q = q.view(batch, n_tokens, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(batch, n_tokens, self.n_head_kv, self.head_dim).transpose(1, 2)
        v = v.view(batch, n_tokens, self.n_head_kv, -1).transpose(1, 2)
        if prefix + "attn_q_norm.weight" in w:  # qwen3, gemma3: per-head RMSNorm of q and k before RoPE
            q = _rms_norm(q, w[prefix + "attn_q_norm.weight"], self.eps)
            k = _rms_norm(k, w[prefix + "attn_k_norm.weight"], self.eps)
        layer = self.layers[index]
        cos, sin = self._rope_tables(n_tokens, layer)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        group = self.n_head // self.n_head_kv
        # q head j reads kv head j // group, as ggml's broadcasting matmul does.
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        mask = self._window_mask(n_tokens, layer.window)
        attn = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.attention_scale
        )
        attn = attn.transpose(1, 2).reshape(batch, n_tokens, -1)
        attn = self._linear(attn, prefix + "attn_output.weight", overrides, capture)
        h = h + self._post_norm(attn, prefix + "post_attention_norm.weight")
        x = _rms_norm(h, w[prefix + "ffn_norm.weight"], self.eps)
        gate = self._linear(x, prefix + "ffn_gate.weight", overrides, capture)
        up = self._linear(x, prefix + "ffn_up.weight", overrides, capture)
        ffn = self._linear(self.ffn_activation(gate) * up, prefix + "ffn_down.weight", overrides, capture)
        return h + self._post_norm(ffn, prefix + "post_ffw_norm.weight")

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        """What the output projection multiplies: the final norm of the hidden states leaving the last block."""
        return _rms_norm(h, self.weights["output_norm.weight"], self.eps)

    def head(self, h: torch.Tensor, overrides: Overrides | None = None, capture: Capture | None = None) -> torch.Tensor:
        """Logits from the hidden states leaving the last block."""
        x = self.head_input(h)
        if capture is not None:
            capture("output.weight", x)
        parts = [x @ rows.T for _, rows in self.bands(self.output_name, overrides)]
        logits = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self.logit_softcap > 0:  # Gemma 2-style final soft-capping, when the file sets it
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits

    def blocks(self, states: list[torch.Tensor], start: int = 0, overrides: Overrides | None = None,
               capture: Capture | None = None, keep: list[list[torch.Tensor]] | None = None) -> list[torch.Tensor]:
        """The hidden states leaving the last block, for several batches' states entering block `start`, run block
        by block: each block's weights are fetched once for every batch, so a pass reads a streamed model once.
        `keep[b]`, where given, receives the states entering block b (and `keep[n_blocks]` the last ones)."""
        for index in range(start, self.n_blocks):
            if keep is not None:
                keep[index] = list(states)
            states = [self.block(index, h, overrides, capture) for h in states]
        if keep is not None:
            keep[self.n_blocks] = list(states)
        return states

    @torch.inference_mode()
    def logits(
        self,
        tokens: torch.Tensor,
        overrides: Overrides | None = None,
        capture: Capture | None = None,
    ) -> torch.Tensor:
        """Logits [batch, tokens, vocab] of token windows [batch, tokens], each window from position 0."""
        (h,) = self.blocks([self.embed(tokens, overrides)], 0, overrides, capture)
        return self.head(h, overrides, capture)

    @torch.inference_mode()
    def observe(self, batches: list[torch.Tensor], capture: Capture, output: bool = False) -> None:
        """Show `capture` the input of every block linear for windows in several batches, block by block (one read
        of a streamed model for all of them), and with `output` the output projection's input too, without
        computing the logits (a 152k vocabulary's are 0.6 MB per token)."""
        states = self.blocks([self.embed(batch.to(self.device)) for batch in batches], 0, capture=capture)
        if output:
            for h in states:
                capture("output.weight", self.head_input(h))


def first_block_touched(names: Mapping[str, object] | list[str], n_blocks: int) -> int:
    """The earliest block whose input changes when these tensors change (0 for token_embd, n_blocks for output)."""
    first = n_blocks
    for name in names:
        if name.startswith("blk."):
            first = min(first, int(name.split(".")[1]))
        elif name == "token_embd.weight":
            return 0
    return first


@dataclass
class _Reference:
    log_probs: list[torch.Tensor]  # per window batch: reference log-probabilities [batch, tokens, vocab]
    block_inputs: list[list[torch.Tensor]] | None  # [block][window batch] hidden states entering the block


class KLDReference:
    """Mean KL(reference || modified) over fixed token windows, at the cost of one modified forward.

    The unmodified model's probabilities are computed once. With `checkpoint_blocks`, the unmodified
    hidden states entering every block are kept too, so a modification confined to block b re-runs
    only blocks b.. (the per-tensor sensitivity sweep spends half the compute it otherwise would).
    KL is summed as p * (log p - log q) term by term: the shortcut through logsumexp cancels two
    numbers of size ~|logits| and its float32 error (~1e-4 nats) would swamp the damage of Q8_0.
    """

    def __init__(self, forward: Forward, tokens: torch.Tensor, batch_windows: int = 4, checkpoint_blocks: bool = True) -> None:
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise RampError("KLD reference needs token windows shaped [windows, tokens]")
        self.forward = forward
        self.batches = list(torch.split(tokens.to(forward.device), batch_windows))
        self.n_tokens = int(tokens.numel())
        self._reference = self._compute(checkpoint_blocks)

    @torch.inference_mode()
    def _compute(self, checkpoint_blocks: bool) -> _Reference:
        fwd = self.forward
        block_inputs: list[list[torch.Tensor]] | None = [[] for _ in range(fwd.n_blocks + 1)] if checkpoint_blocks else None
        states = fwd.blocks([fwd.embed(batch) for batch in self.batches], keep=block_inputs)
        return _Reference([torch.log_softmax(fwd.head(h), dim=-1) for h in states], block_inputs)

    @torch.inference_mode()
    def kld(self, overrides: Overrides | None = None, capture: Capture | None = None, windows: int | None = None) -> float:
        """Mean per-token KLD (nats) of the model with `overrides` against the unmodified model, on the first
        `windows` windows (all of them when None): a search scores most candidates on a few windows only."""
        fwd = self.forward
        ref = self._reference
        start = 0 if ref.block_inputs is None or capture is not None else first_block_touched(list(overrides or {}), fwd.n_blocks)
        left = sum(len(batch) for batch in self.batches) if windows is None else windows
        sizes = []  # windows scored from each batch
        for batch in self.batches:
            if left <= 0:
                break
            sizes.append(min(left, len(batch)))
            left -= sizes[-1]
        if start == 0:
            states = [fwd.embed(batch[:size], overrides) for batch, size in zip(self.batches, sizes)]
        else:
            states = [h[:size] for h, size in zip(ref.block_inputs[start], sizes)]
        total, n_tokens = 0.0, 0
        for i, h in enumerate(fwd.blocks(states, start, overrides, capture)):
            log_q = torch.log_softmax(fwd.head(h, overrides, capture), dim=-1)
            log_p = ref.log_probs[i][:sizes[i]]
            total += float((log_p.exp() * (log_p - log_q)).sum(-1).double().sum())
            n_tokens += int(log_p.shape[0] * log_p.shape[1])
        return total / n_tokens


def tokens_sha256(tokens: torch.Tensor) -> str:
    """Identity of a set of token windows (ids and window shape), for cache keys."""
    return hashlib.sha256(tokens.cpu().numpy().astype(np.int64).tobytes() + str(tuple(tokens.shape)).encode()).hexdigest()
