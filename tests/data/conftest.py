"""Shared fixtures for the data-layer tests."""
from __future__ import annotations

import pytest

SMALL_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n"
)


@pytest.fixture
def small_text() -> str:
    """A few lines of Shakespeare, repeated so every split has some of each character."""
    return SMALL_TEXT * 20


@pytest.fixture
def corpus_dir(tmp_path: Path, small_text: str) -> Path:
    """A folder with two text documents, a hidden file and a nested document."""
    root = tmp_path / "corpus"
    (root / "nested").mkdir(parents=True)
    (root / "a.txt").write_text(small_text[: len(small_text) // 2], encoding="utf-8")
    (root / "nested" / "b.md").write_text(small_text[len(small_text) // 2:], encoding="utf-8")
    (root / ".hidden").write_text("SECRET never read", encoding="utf-8")
    return root
