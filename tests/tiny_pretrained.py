"""A tiny "pretrained" causal LM for tests: a byte-level BPE tokenizer trained on a few lines and a
random Llama of its vocabulary, saved together like a real model folder (no download)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

LINES = ["to be or not to be, that is the question:", "whether tis nobler in the mind to suffer",
         "the slings and arrows of outrageous fortune,", "or to take arms against a sea of troubles"]


def tiny_pretrained(folder: Path) -> int:
    """A byte-level BPE tokenizer and a random Llama of its vocabulary, saved together; the size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(LINES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, eos_token_id=fast.eos_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return len(fast)
