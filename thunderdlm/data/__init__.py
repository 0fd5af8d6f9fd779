"""The data layer: corpora, tokenizers, token bins and batches.

Typical use::

    from thunderdlm.data import prepare_data, TokenData, RandomWindows
    folder = prepare_data("data/shakespeare-char")           # char tokenizer, 90/10 split
    data = TokenData(folder)
    batches = RandomWindows(data.split("train"), seq_len=256, batch_size=32, seed=0)
    x = batches.next_batch()                                  # (32, 256) int64
"""
from thunderdlm.data.bins import RandomWindows, TokenData, eval_windows
from thunderdlm.data.corpus import read_documents, shakespeare_text
from thunderdlm.data.prepare import prepare_data
from thunderdlm.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer

__all__ = ["prepare_data", "TokenData", "RandomWindows", "eval_windows", "load_tokenizer",
           "train_tokenizer", "Tokenizer", "shakespeare_text", "read_documents"]
