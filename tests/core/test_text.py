"""Text conditioning: padding, the DEMO-ONLY word-level encoder, and the optional UMT5 encoder."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from videossm_core.config import get_preset
from videossm_core.demo.world import all_prompts
from videossm_core.text import (
    PAD_ID,
    UNK_ID,
    DemoTextEncoder,
    UMT5TextEncoder,
    default_vocabulary,
    pad_text_embeddings,
)

PROMPTS = ["a red circle bouncing on a dark background",
           "a blue circle bouncing on a dark background",
           "a red circle sliding left on a dark background"]


@pytest.fixture(scope="module")
def encoder():
    return DemoTextEncoder(seed=0).eval()


# ------------------------------------------------------------------------------------ padding


def test_pad_text_embeddings():
    emb = torch.randn(2, 5, 8)
    out = pad_text_embeddings(emb, 12, text_dim=8)
    assert out.shape == (2, 12, 8)
    assert torch.equal(out[:, :5], emb) and not out[:, 5:].any()
    assert pad_text_embeddings(out, 12) is out
    with pytest.raises(ValueError, match="more than text_len"):
        pad_text_embeddings(emb, 4)
    with pytest.raises(ValueError, match="text_dim=16"):
        pad_text_embeddings(emb, 12, text_dim=16)
    with pytest.raises(ValueError, match=r"\[B, L, D\]"):
        pad_text_embeddings(emb[0], 12)


# --------------------------------------------------------------------------- demo text encoder


def test_defaults_match_demo_preset(encoder):
    preset = get_preset("demo")
    assert (encoder.text_len, encoder.text_dim) == (preset.text_len, preset.text_dim) == (16, 64)
    assert "DEMO-ONLY" in DemoTextEncoder.__doc__


def test_tokenize(encoder):
    ids = encoder.tokenize(["A  Red, circle!", "a mauve circle"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    vocab = encoder.word_to_id
    assert ids[0, :3].tolist() == [vocab["a"], vocab["red"], vocab["circle"]]
    assert (ids[0, 3:] == PAD_ID).all()
    assert ids[1, 1].item() == UNK_ID
    with pytest.raises(ValueError, match="mauve"):
        encoder.tokenize(["a mauve circle"], strict=True)
    with pytest.raises(ValueError, match="more than text_len"):
        encoder.tokenize(" ".join(["red"] * 17), strict=True)
    assert encoder.tokenize(" ".join(["red"] * 17)).shape == (1, 16)  # cut when not strict
    for prompt in all_prompts()[::37]:
        encoder.tokenize(prompt, strict=True)  # the whole grammar is in the vocabulary


def test_encode_shapes_and_zero_padding(encoder):
    with torch.no_grad():
        out = encoder.encode(PROMPTS + ["a red circle"])
    assert out.shape == (4, 16, 64) and out.dtype == torch.float32
    lengths = [8, 8, 9, 3]
    for row, n in enumerate(lengths):
        assert (out[row, :n].abs().sum(-1) > 0).all()
        assert not out[row, n:].any()
    assert torch.isfinite(out).all()


def test_empty_prompt_encodes_to_zeros(encoder):
    with torch.no_grad():
        out = encoder.encode(["", PROMPTS[0]])
    assert torch.isfinite(out).all() and not out[0].any() and out[1].any()


def test_distinct_prompts_differ(encoder):
    prompts = all_prompts()[::11]
    with torch.no_grad():
        flat = encoder.encode(prompts).flatten(1)
    dist = torch.cdist(flat, flat)
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 1e-2
    with torch.no_grad():  # one word apart, and the same words in another order, still differ
        a, b = encoder.encode(PROMPTS[:2])
        c, d = encoder.encode(["a red circle", "red a circle"])
    assert (a - b).abs().max() > 1e-2 and (c - d).abs().max() > 1e-2


def test_batch_independence(encoder):
    with torch.no_grad():
        batch = encoder.encode(PROMPTS + ["a red circle"])
        alone = encoder.encode(["a red circle"])
    torch.testing.assert_close(batch[3:], alone, rtol=1e-5, atol=1e-6)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = DemoTextEncoder(seed=5), DemoTextEncoder(seed=5), DemoTextEncoder(seed=6)
    assert torch.equal(torch.rand(3), expected)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["token_embedding.weight"], sc["token_embedding.weight"])
    # the two transformer layers start different (nn.TransformerEncoder would clone one layer)
    assert not torch.equal(sa["layers.0.linear1.weight"], sa["layers.1.linear1.weight"])


def test_custom_sizes():
    enc = DemoTextEncoder(text_len=8, text_dim=32, width=48, num_layers=1, num_heads=2)
    assert enc.encode(PROMPTS).shape == (3, 8, 32)
    with pytest.raises(ValueError, match="divisible"):
        DemoTextEncoder(width=50, num_heads=4)


def test_gradients_flow():
    enc = DemoTextEncoder(seed=1).train()
    out = enc.encode(PROMPTS)
    (out**2).mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert not enc.token_embedding.weight.grad[PAD_ID].any()  # padding never trains


def test_save_load_round_trip(tmp_path):
    enc = DemoTextEncoder(seed=3, text_len=12, text_dim=24, width=32, vocabulary=default_vocabulary() + ["zebra"])
    with torch.no_grad():
        for p in enc.parameters():  # as if trained
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "demo_text.safetensors"
    enc.save(path)
    loaded = DemoTextEncoder.load(path)
    assert loaded.config == enc.config and loaded.vocabulary == enc.vocabulary
    sd, ld = enc.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    with torch.no_grad():
        assert torch.equal(enc.eval().encode(PROMPTS + ["a zebra"]), loaded.eval().encode(PROMPTS + ["a zebra"]))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["demo_only"] == "true" and "DEMO-ONLY" in meta["description"] and "UMT5" in meta["description"]
    assert json.loads(meta["vocabulary"])[-1] == "zebra"


def test_load_rejects_other_files(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a VideoSSM demo text encoder"):
        DemoTextEncoder.load(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        DemoTextEncoder.load(garbage)
    with pytest.raises(FileNotFoundError):
        DemoTextEncoder.load(tmp_path / "missing.safetensors")


def test_load_rejects_mismatched_tensors(tmp_path):
    path = tmp_path / "demo_text.safetensors"
    DemoTextEncoder().save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["config"] = json.dumps({**json.loads(meta["config"]), "width": 32})
    from safetensors.torch import load_file
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ValueError, match="do not match"):
        DemoTextEncoder.load(path)


# ------------------------------------------------------------------------------ UMT5 (optional)


def test_umt5_without_transformers_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="pip install transformers sentencepiece"):
        UMT5TextEncoder.from_folder(tmp_path)


def _tiny_encoder_folder(path, model_type: str):
    """A real (tiny, randomly initialised) T5-family encoder and a word-level fast tokenizer."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in "a red blue circle bouncing on dark background".split():
        vocab[word] = len(vocab)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(str(path))
    kwargs = dict(vocab_size=32, d_model=16, d_kv=4, num_heads=2, num_layers=2, d_ff=32,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if model_type == "umt5":
        config, model_cls = transformers.UMT5Config(**kwargs), transformers.UMT5EncoderModel
    else:
        config, model_cls = transformers.T5Config(**kwargs), transformers.T5EncoderModel
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(str(path))
    return model


@pytest.mark.parametrize("model_type", ["umt5", "t5"])
def test_umt5_encoder_from_local_folder(tmp_path, model_type):
    reference = _tiny_encoder_folder(tmp_path, model_type)
    enc = UMT5TextEncoder.from_folder(tmp_path, dtype=torch.float32, text_len=12)
    assert enc.text_dim == 16
    out = enc.encode(["a  red circle", "a blue circle bouncing on a dark background"])
    assert out.shape == (2, 12, 16) and out.dtype == torch.float32
    lengths = [4, 9]  # words + EOS
    for row, n in enumerate(lengths):
        assert (out[row, :n].abs().sum(-1) > 0).all() and not out[row, n:].any()
    ids = torch.tensor([[3, 4, 6, 1]])  # "a red circle </s>", unpadded
    with torch.no_grad():
        direct = reference(input_ids=ids).last_hidden_state
    # T5's relative attention with a padding mask gives the same values on the real tokens
    torch.testing.assert_close(out[0, :4], direct[0], rtol=1e-4, atol=1e-5)


def test_umt5_rejects_other_models_and_missing_folders(tmp_path):
    transformers = pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError):
        UMT5TextEncoder.from_folder(tmp_path / "missing")
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="gpt2"):
        UMT5TextEncoder.from_folder(tmp_path)
