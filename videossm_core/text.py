"""Text conditioning: ``[B, L <= text_len, text_dim]`` embeddings, zero padded to ``text_len``.

Two encoders produce it:

* ``DemoTextEncoder`` -- DEMO-ONLY. A tiny word-level transformer over the procedural world's
  vocabulary (``videossm_core.demo.world``), trained jointly with the demo generator. It exists so the
  demo runs in minutes on a CPU; it understands nothing beyond the demo grammar.
* ``UMT5TextEncoder`` -- the real thing for Wan-based models: the UMT5-XXL encoder through the optional
  ``transformers`` dependency, loaded from a local folder only (never downloads).

Both zero every position past a prompt's last token, as Wan does with UMT5 (its DiT pads each prompt's
``seq_len`` embeddings with zeros up to ``text_len``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .demo.world import prompt_words

DEMO_FORMAT = "videossm-demo-text-encoder"
DEMO_FORMAT_VERSION = "1"
DEMO_DESCRIPTION = (
    "DEMO-ONLY text encoder for the VideoSSM procedural demo world: a tiny word-level transformer that "
    "understands only prompts like 'a red circle bouncing on a dark background'. Real VideoSSM/Wan "
    "models use the UMT5-XXL encoder.")

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
FUNCTION_WORDS = ("a", "an", "the", "on", "background")
_WORD = re.compile(r"[a-z0-9]+")


def pad_text_embeddings(emb: torch.Tensor, text_len: int, text_dim: int | None = None) -> torch.Tensor:
    """Zero-pad ``[B, L, D]`` text embeddings to ``[B, text_len, D]``.

    Raises ValueError for a tensor that is not 3-D, that is longer than ``text_len`` (silently cutting
    a prompt would change its meaning), or whose last dimension is not ``text_dim`` (when given).
    """
    if not isinstance(emb, torch.Tensor) or emb.ndim != 3:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"text embeddings must be a tensor [B, L, D], got {shape}")
    b, length, dim = emb.shape
    if text_dim is not None and dim != text_dim:
        raise ValueError(f"text embeddings have dim {dim}, but the model expects text_dim={text_dim}")
    if length > text_len:
        raise ValueError(f"text embeddings have {length} tokens, more than text_len={text_len}")
    if length == text_len:
        return emb
    return torch.cat([emb, emb.new_zeros(b, text_len - length, dim)], dim=1)


def default_vocabulary() -> list[str]:
    """Pad and unknown tokens, a few function words, then every word of the demo world's prompts."""
    vocab = [PAD_TOKEN, UNK_TOKEN]
    for word in (*FUNCTION_WORDS, *prompt_words()):
        if word not in vocab:
            vocab.append(word)
    return vocab


def split_words(text: str) -> list[str]:
    """Lower-case words of a prompt; punctuation and extra spaces are dropped."""
    return _WORD.findall(text.lower())


class DemoTextEncoder(nn.Module):
    """DEMO-ONLY text encoder (real models use UMT5-XXL; see ``UMT5TextEncoder``).

    Word-level tokens (id 0 = pad, 1 = unknown) -> token + learned position embeddings -> a small
    pre-norm transformer encoder -> LayerNorm -> linear to ``text_dim``. Output ``[B, text_len,
    text_dim]`` with padded positions exactly zero. Differentiable, so it trains with the generator;
    its seeded random init already maps distinct prompts to distinct embeddings.
    """

    def __init__(self, text_len: int = 16, text_dim: int = 64, width: int = 64, num_layers: int = 2,
                 num_heads: int = 4, ffn_dim: int | None = None, vocabulary: Sequence[str] | None = None,
                 seed: int = 0):
        super().__init__()
        vocab = list(vocabulary) if vocabulary is not None else default_vocabulary()
        if vocab[:2] != [PAD_TOKEN, UNK_TOKEN] or len(set(vocab)) != len(vocab):
            raise ValueError(f"vocabulary must start with {[PAD_TOKEN, UNK_TOKEN]} and have no duplicates")
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.config = {"text_len": int(text_len), "text_dim": int(text_dim), "width": int(width),
                       "num_layers": int(num_layers), "num_heads": int(num_heads),
                       "ffn_dim": int(ffn_dim if ffn_dim is not None else 2 * width)}
        self.vocabulary = vocab
        self.word_to_id = {w: i for i, w in enumerate(vocab)}
        # Seeded init that leaves the caller's global RNG untouched. Layers are built one by one
        # (not nn.TransformerEncoder, which deep-copies one layer so all start identical).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.token_embedding = nn.Embedding(len(vocab), width, padding_idx=PAD_ID)
            self.position_embedding = nn.Parameter(torch.randn(text_len, width))
            self.layers = nn.ModuleList([
                nn.TransformerEncoderLayer(width, num_heads, self.config["ffn_dim"], dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
                for _ in range(num_layers)])
            self.norm = nn.LayerNorm(width)
            self.proj = nn.Linear(width, text_dim)

    @property
    def text_len(self) -> int:
        return self.config["text_len"]

    @property
    def text_dim(self) -> int:
        return self.config["text_dim"]

    def tokenize(self, prompts: str | Sequence[str], strict: bool = False) -> torch.Tensor:
        """Token ids ``[B, text_len]`` (int64, pad 0). Unknown words map to the unknown id, prompts
        longer than ``text_len`` words are cut; with ``strict=True`` both raise ValueError instead."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = torch.full((len(prompts), self.text_len), PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = split_words(prompt)
            if strict:
                unknown = [w for w in words if w not in self.word_to_id]
                if unknown:
                    raise ValueError(f"unknown word(s) {unknown} in prompt {prompt!r}; the demo text "
                                     f"encoder knows only {self.vocabulary[2:]}")
                if len(words) > self.text_len:
                    raise ValueError(f"prompt {prompt!r} has {len(words)} words, more than "
                                     f"text_len={self.text_len}")
            tokens = [self.word_to_id.get(w, UNK_ID) for w in words[:self.text_len]]
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def prompt_warnings(self, prompt: str) -> list[str]:
        """What ``tokenize`` silently drops from a prompt (unknown words, words past ``text_len``), in
        words a user can act on; empty when the prompt is encoded as written."""
        words = split_words(prompt)
        out = []
        unknown = sorted({w for w in words if w not in self.word_to_id})
        if unknown:
            shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
            out.append(f"the demo text encoder does not know {shown} (in {prompt[:60]!r}) and ignores them; "
                       "it knows only the demo world's words (see videossm_core/demo/weights/CARD.md)")
        if len(words) > self.text_len:
            out.append(f"{prompt[:60]!r} has {len(words)} words; the demo text encoder reads only the first "
                       f"{self.text_len}")
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, L <= text_len]`` -> embeddings ``[B, text_len, text_dim]``, zero where ids == pad."""
        if ids.ndim != 2 or ids.shape[1] > self.text_len:
            raise ValueError(f"token ids must be [B, L <= {self.text_len}], got {tuple(ids.shape)}")
        if ids.shape[1] < self.text_len:
            ids = torch.cat([ids, ids.new_full((ids.shape[0], self.text_len - ids.shape[1]), PAD_ID)], 1)
        valid = ids != PAD_ID
        # An empty prompt has no key to attend to (softmax over nothing is NaN): let it see position 0;
        # its output is zeroed below anyway, so an empty prompt encodes to all zeros.
        ignore = ~valid
        ignore[:, 0] &= valid.any(1)
        x = self.token_embedding(ids) + self.position_embedding
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=ignore)
        out = self.proj(self.norm(x))
        return out * valid.unsqueeze(-1).to(out.dtype)

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> ``[B, text_len, text_dim]`` on this module's device (differentiable)."""
        return self(self.tokenize(prompts).to(self.position_embedding.device))

    def save(self, path: str | Path) -> None:
        """One safetensors file; config and vocabulary travel as JSON metadata, marked DEMO-ONLY."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": DEMO_FORMAT, "format_version": DEMO_FORMAT_VERSION, "demo_only": "true",
                    "description": DEMO_DESCRIPTION, "config": json.dumps(self.config, sort_keys=True),
                    "vocabulary": json.dumps(self.vocabulary)}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "DemoTextEncoder":
        """Load a file written by ``save``; anything else raises ValueError saying what it is not."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except Exception as exc:  # safetensors raises its own error type for a non-safetensors file
            raise ValueError(f"{path} is not a safetensors file, so not a demo text encoder ({exc})") from exc
        if metadata.get("format") != DEMO_FORMAT:
            raise ValueError(f"{path} is not a VideoSSM demo text encoder (its metadata format is "
                             f"{metadata.get('format')!r}, expected {DEMO_FORMAT!r})")
        if metadata.get("format_version") != DEMO_FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported demo text encoder format_version "
                             f"{metadata.get('format_version')!r}, expected {DEMO_FORMAT_VERSION!r}")
        model = cls(**json.loads(metadata["config"]), vocabulary=json.loads(metadata["vocabulary"]))
        try:
            model.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: tensors do not match the demo text encoder config: {exc}") from exc
        return model.to(device)


_TRANSFORMERS_HINT = ("UMT5TextEncoder needs the optional packages transformers and sentencepiece: "
                      "pip install transformers sentencepiece")


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(_TRANSFORMERS_HINT) from exc
    return transformers


class UMT5TextEncoder:
    """Wan's text encoder: the UMT5-XXL encoder (or any T5/UMT5 encoder) from a local folder.

    ``encode`` returns ``[B, text_len, d_model]`` (``[B, 512, 4096]`` for UMT5-XXL), zero past each
    prompt's last token (its EOS), like Wan's DiT padding of ``context[:seq_len]``. Inference only.
    """

    def __init__(self, tokenizer, model, text_len: int = 512):
        self.tokenizer = tokenizer
        self.model = model
        self.text_len = int(text_len)

    @classmethod
    def from_folder(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu", text_len: int = 512) -> "UMT5TextEncoder":
        """Load tokenizer files and ``UMT5EncoderModel``/``T5EncoderModel`` weights from ``path``.

        Never downloads (``local_files_only=True``); the folder needs a config.json with model_type
        "umt5" or "t5", the weights, and the tokenizer files.
        """
        transformers = _import_transformers()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {path}")
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        model_classes = {"umt5": "UMT5EncoderModel", "t5": "T5EncoderModel"}
        if config.model_type not in model_classes:
            raise ValueError(f"{path} holds a {config.model_type!r} model, expected one of {sorted(model_classes)}")
        model_cls = getattr(transformers, model_classes[config.model_type])
        # transformers 5 renamed torch_dtype to dtype; pass it at load time so a 5.7B-parameter
        # encoder is never materialised in float32 first.
        major = int(transformers.__version__.split(".")[0])
        dtype_kw = {"dtype" if major >= 5 else "torch_dtype": dtype}
        model = model_cls.from_pretrained(str(path), local_files_only=True, **dtype_kw)
        model = model.to(device).eval().requires_grad_(False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls(tokenizer, model, text_len)

    @property
    def text_dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [" ".join(p.split()) for p in prompts]  # Wan cleans whitespace before tokenizing
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.text_len,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return out * mask.unsqueeze(-1).to(out.dtype)
