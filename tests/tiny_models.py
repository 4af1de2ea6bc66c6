"""Tiny random models of several architectures, a tiny tokenizer and word text, for tests."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 128
ARCHS = ("llama", "mistral", "qwen2", "gemma3", "opt")


def tiny_config(
    arch: str, *, hidden: int = 32, layers: int = 2, heads: int = 4
) -> PretrainedConfig:
    common = {
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 128,
    }
    if arch == "llama":
        return LlamaConfig(**common, intermediate_size=64, num_key_value_heads=2)
    if arch == "mistral":
        return MistralConfig(
            **common, intermediate_size=64, num_key_value_heads=2, sliding_window=16
        )
    if arch == "qwen2":
        return Qwen2Config(**common, intermediate_size=64, num_key_value_heads=2)
    if arch == "gemma3":
        # three layers so that both sliding-window and global attention layers are present
        return Gemma3TextConfig(
            **{**common, "num_hidden_layers": max(layers, 3)},
            intermediate_size=64,
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=8,
            sliding_window_pattern=2,
        )
    if arch == "opt":
        return OPTConfig(**common, ffn_dim=64, word_embed_proj_dim=hidden)
    raise ValueError(arch)


def build_tiny(arch: str = "llama", seed: int = 0, **kw: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **kw)).eval()


WORDS = [f"w{i}" for i in range(VOCAB - 2)]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def word_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS[:40]) for _ in range(n_words))


def tiny_engine(pattern=None, objective="kl", second_order=True):  # type: ignore[no-untyped-def]
    """A FitnessEngine on a 4-block tiny Llama with 8 x 24 random calibration ids (with the
    second-order statistics that a default metric search scores)."""
    from optishear.core.patterns import Pattern
    from optishear.search.fitness import FitnessEngine

    model = build_tiny("llama", layers=4)
    ids = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(1))
    engine = FitnessEngine(
        model, ids, pattern or Pattern(), batch_size=4, objective=objective,
        second_order=second_order,
    )  # fmt: skip
    return engine, model, ids


def shipped_recipe(engine, candidate, update="none"):  # type: ignore[no-untyped-def]
    """The prune that ships `candidate` from `engine`'s model (optishear.recipe.shipped)."""
    from optishear.recipe.shipped import shipped_config

    return shipped_config(
        candidate,
        engine.pattern,
        engine.block_params,
        update=update,
        batch_size=engine.batch_size,
        layer_numel=[n for _, _, n in engine.layer_layout],
    )


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte: every prompt and choice tokenizes apart, and context + continuation
    is the concatenation of their tokens, so log-likelihoods can be recomputed by hand."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)} | {"<eos>": len(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def byte_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    config.max_position_embeddings = 256
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


_WORDS = [
    "river",
    "mountain",
    "village",
    "castle",
    "forest",
    "garden",
    "market",
    "harbour",
    "bridge",
    "tower",
    "valley",
    "island",
    "temple",
    "palace",
    "museum",
    "library",
    "station",
    "church",
    "school",
    "factory",
    "farmer",
    "soldier",
    "teacher",
    "merchant",
    "sailor",
    "painter",
    "writer",
    "doctor",
    "king",
    "queen",
    "prince",
    "bishop",
    "knight",
    "horse",
    "wheat",
    "barley",
    "copper",
    "silver",
    "marble",
    "granite",
    "timber",
    "cotton",
    "wool",
    "silk",
    "salt",
    "iron",
    "coal",
    "glass",
    "paper",
    "music",
]
_VERBS = [
    "built",
    "crossed",
    "painted",
    "visited",
    "defended",
    "described",
    "sold",
    "bought",
    "carried",
    "found",
]


def sentence_docs(n_docs: int = 12, paragraphs: int = 12, seed: int = 0) -> list[str]:
    """Documents of short paragraphs of plain sentences over a small vocabulary, so that a
    sentence's last word often occurs earlier in its paragraph (as in real prose)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        paras = ["A Heading Without An Ending"]
        for _ in range(paragraphs):
            sents = []
            for _ in range(rng.randint(4, 8)):
                words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
                words.insert(1, rng.choice(_VERBS))
                sents.append(" ".join(["The", *words]) + ".")
            paras.append(" ".join(sents))
        docs.append("\n\n".join(paras))
    return docs
