"""What a measurement calibrates on: a `CalibrationSpec` (text, tokens, window), and the one default of each
use, all here. Every artifact made from calibration tokens records its spec (`as_dict`), so the tokens can be
cut again and two artifacts compared: a sensitivity table and the pair measure, a job and its rerun.

The sizes differ by use because each is pinned by something it must keep: the importance matrix uses
llama-imatrix's context (and keys the caches of everything quantized with it), the KLD sweep and the estimates
the sizes their cached tables and published figures were measured on, the agent the windows its policies were
trained with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from ramp.errors import RampError
from ramp.models.text import DEFAULT_TEXT

if TYPE_CHECKING:
    import torch

    from ramp.models.model import Model


@dataclass(frozen=True)
class CalibrationSpec:
    """The first `tokens` tokens of the calibration half of the named text, in windows of `window` tokens,
    tokenized by the model's own tokenizer (`ramp.models.tokenizer`), each window starting at BOS when the
    vocabulary adds one; `tokens` is rounded down to whole windows."""

    text: str
    tokens: int
    window: int

    def __post_init__(self) -> None:
        for name in ("tokens", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RampError(f"calibration {name} must be a whole number of at least 1, got {value!r}")
        if self.tokens < self.window:
            raise RampError(f"need at least one window: {self.tokens} calibration tokens < window of {self.window}; "
                            "raise the token count")

    @property
    def n_windows(self) -> int:
        return self.tokens // self.window

    def sized(self, tokens: int | None = None, window: int | None = None, text: str | None = None) -> "CalibrationSpec":
        """This spec with the given fields changed (None keeps a field)."""
        return replace(self, text=text or self.text, tokens=tokens or self.tokens, window=window or self.window)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "CalibrationSpec":
        if not isinstance(data, dict) or set(data) != {"text", "tokens", "window"} or not isinstance(data["text"], str):
            raise RampError(f"{data!r} is not a calibration spec (text, tokens, window)")
        return cls(data["text"], data["tokens"], data["window"])

    def windows(self, model: "Model") -> "torch.Tensor":
        """The token windows [n_windows, window] of `model`'s tokenizer, int64."""
        import torch

        from ramp.models.text import calibration_text
        from ramp.models.tokenizer import token_windows, vocabulary_file

        windows = token_windows(vocabulary_file(model), calibration_text(self.text), self.window, self.n_windows)
        if len(windows) < self.n_windows:
            raise RampError(f"the {self.text} calibration text has {len(windows) * self.window} tokens for this model, "
                            f"fewer than the {self.tokens} asked for; ask for fewer")
        return torch.from_numpy(windows.astype("int64"))

    def __str__(self) -> str:
        return f"{self.n_windows * self.window} tokens of {self.text} in windows of {self.window}"


# llama-imatrix's default context; its bytes key the importance matrix, and through it every cached table
# and preset quantized with it.
IMATRIX = CalibrationSpec(DEFAULT_TEXT, 8192, 512)
# The KLD sweep: one forward per (tensor, format), cost linear in tokens (SmolLM2's 964 forwards of 256 tokens
# took about 20 minutes on 2 busy cores).
SENSITIVITY = CalibrationSpec(DEFAULT_TEXT, 256, 256)
# The sweep-free estimates: a pass or two, so 4x the sweep's tokens for a steadier statistic.
ESTIMATE = CalibrationSpec(DEFAULT_TEXT, 1024, 256)
# Activation statistics of the per-tensor embeddings, which the agent reads.
EMBEDDINGS = CalibrationSpec(DEFAULT_TEXT, 1024, 256)
# Scale Folding's activation maxima: more tokens than the embeddings, as a maximum needs a rare token to see.
FOLD = CalibrationSpec(DEFAULT_TEXT, 2048, 256)
# The whole-model search (`ramp allocate --method search`): most candidates are scored on its first window,
# fewer on its first quarter, the best on all of it (successive halving); 2048 tokens keep a full score near
# 25 s of one forward on two cores for a 135M model.
SEARCH = CalibrationSpec(DEFAULT_TEXT, 2048, 128)
# The agent's episode-end KLD evaluator (`ramp train --evaluate-episodes`, `ramp tune`).
AGENT = CalibrationSpec(DEFAULT_TEXT, 256, 128)


def calibration_tokens(model: "Model", calibration: "CalibrationSpec | torch.Tensor") -> tuple["torch.Tensor", dict]:
    """The windows a measurement runs on and the record its artifact keeps of them: a spec's windows and the
    spec; windows given directly (not cut from a text, as tests do) and their size alone, with no text."""
    if isinstance(calibration, CalibrationSpec):
        return calibration.windows(model), calibration.as_dict()
    if calibration.ndim != 2 or calibration.shape[0] == 0:
        raise RampError("calibration tokens must be windows shaped [windows, tokens]")
    return calibration, {"text": None, "tokens": int(calibration.numel()), "window": int(calibration.shape[1])}


def recorded_spec(extra: dict) -> CalibrationSpec | None:
    """The spec an artifact records in its `extra` (None for windows not cut from a text). A table written
    before specs were recorded has only `n_tokens` and `window`: it is taken to be on the default text, the
    text of every table ramp measured then unless told otherwise."""
    if "calibration" in extra:
        data = extra["calibration"]
        return CalibrationSpec.from_dict(data) if isinstance(data, dict) and data.get("text") else None
    if {"n_tokens", "window"} <= set(extra):
        return CalibrationSpec(DEFAULT_TEXT, int(extra["n_tokens"]), int(extra["window"]))
    return None
