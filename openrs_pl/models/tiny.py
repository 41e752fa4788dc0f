"""A tiny Qwen2-architecture causal LM and a real byte-level BPE tokenizer, built offline in seconds.

The tokenizer mimics DeepSeek-R1-Distill-Qwen's: the same role markers and BOS/EOS strings, a chat template
whose generation prompt pre-fills ``<think>\\n``, and ``<think>``/``</think>`` as added *non-special* tokens, so
they survive ``decode(skip_special_tokens=True)`` exactly as in the real model (the Open-RS format reward
looks for ``\\n</think>\\n`` in the decoded text). Digits are split one per token, as Qwen2's tokenizer does,
and the BPE merges are learned from the bundled math problems so ``\\boxed``, ``\\frac`` etc. become few tokens.

Both are written with ``save_pretrained``, so ``AutoModelForCausalLM``, ``AutoTokenizer`` and vLLM load the
folder like any hub checkpoint. Heads are 64 wide by default: vLLM's CPU backend rejects head sizes below 32.

:func:`save_shaped_checkpoint` writes a real model's architecture (e.g. R1-Distill-Qwen-1.5B's, from
:mod:`openrs_pl.plan`) with random weights and the same tokenizer, for benchmarks that need true sizes offline.

Usage: ``python -m openrs_pl.models.tiny OUT_DIR [--hidden-size 128 --num-layers 2 ...]``
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from openrs_pl.plan import ModelShape

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_TAGS = ["<think>", "</think>"]

# The R1-Distill template without its multi-turn/tool branches: system text right after BOS, role markers,
# and a generation prompt that opens the think block.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '" + ASSISTANT + "' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "<think>\\n' }}{% endif %}"
)


def default_corpus(max_rows: int = 3000) -> list[str]:
    """Problems and solutions from the bundled Open-RS training set, plus think-format snippets."""
    from openrs_pl.data.bundled import read_bundled

    rows = itertools.islice(read_bundled("open_rs"), max_rows)
    texts = [f"{r['problem']}\n{r.get('solution') or ''}" for r in rows]
    texts.append("<think>\nLet me compute step by step.\n</think>\nThe answer is $\\boxed{42}$.")
    return texts


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with R1-Distill-style special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    # Split digits one by one (as Qwen2 does), then byte-level pre-tokenisation.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else default_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    fast.add_tokens(THINK_TAGS, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM sized for ``tokenizer`` (vocab padded to a multiple of 64)."""
    if hidden_size // num_heads < 32:
        raise ValueError(f"head size {hidden_size // num_heads} < 32: vLLM's CPU backend cannot run it")
    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen2Config(  # type: ignore[call-arg]
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_checkpoint(out_dir: str | Path, **model_kwargs: int) -> Path:
    """Build tokenizer + model and save both as a normal HF folder. Returns the folder."""
    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, **model_kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Round-trip once so a broken folder fails here, not deep inside a training run.
    AutoTokenizer.from_pretrained(out)
    return out


def save_shaped_checkpoint(out_dir: str | Path, shape: ModelShape, seed: int = 0) -> Path:
    """A model of ``shape``'s exact architecture (random weights, in ``shape.dtype``) with the tiny tokenizer.

    RoPE theta 10000, RMSNorm eps 1e-6 and 131072 positions are R1-Distill-Qwen-1.5B's config.json values; only
    ``vocab_size`` and the layer sizes vary with ``shape``. The embedding keeps the real vocabulary size, so memory
    and compute are those of the real model although the tokenizer only ever emits its first few thousand ids.
    """
    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(  # type: ignore[call-arg]
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        tie_word_embeddings=shape.tie_word_embeddings,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, shape.dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=2)
    parser.add_argument("--num-kv-heads", type=int, default=1)
    parser.add_argument("--intermediate-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    out = save_tiny_checkpoint(
        a.out_dir,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads,
        intermediate_size=a.intermediate_size,
        seed=a.seed,
    )
    print(f"tiny model written to {out}")


if __name__ == "__main__":
    main()
