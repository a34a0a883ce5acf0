"""Read a text source into a list of documents."""

from __future__ import annotations

import re
from pathlib import Path

from lowcomm.data.spec import DataSource, jsonl_documents, one_line
from lowcomm.data.stories import generate_stories


def txt_documents(text: str) -> list[str]:
    """Paragraphs separated by blank lines; a text with no blank line has one document per line
    (e.g. one verse per line)."""
    paragraphs = re.split(r"\n[ \t\r\f\v]*\n", text.strip())
    pieces = paragraphs if len(paragraphs) > 1 else text.splitlines()
    return [piece.strip() for piece in pieces if piece.strip()]


def file_documents(path: Path) -> list[str]:
    """The documents of one ``.txt`` or ``.jsonl`` file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"data: cannot read {path} as UTF-8 text: {one_line(error)}") from error
    return jsonl_documents(text, path) if path.suffix.lower() == ".jsonl" else txt_documents(text)


def hf_documents(name: str, split: str) -> list[str]:
    """The ``text`` column of an HF dataset split, via ``datasets.load_dataset`` (split slices such
    as ``train[:20000]`` work)."""
    try:
        import datasets
    except ImportError:
        raise ValueError("data: hf: specs need the 'datasets' package (pip install 'lowcomm[hf]')") from None
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:  # the hub, the cache and the builders raise many kinds
        raise ValueError(
            f"data: cannot load hf dataset {name!r} (split {split!r}): hub unreachable, "
            f"or no such dataset or split ({one_line(error)})"
        ) from error
    if "text" not in dataset.column_names:
        raise ValueError(f"data: hf dataset {name!r} has no 'text' column (columns: {', '.join(dataset.column_names)})")
    return [text for text in dataset["text"] if text.strip()]


def read_documents(source: DataSource) -> list[str]:
    """All documents of a text source, in a fixed order."""
    if source.kind == "synthetic-stories":
        documents = generate_stories()
    elif source.kind == "hf":
        documents = hf_documents(source.hf_name, source.hf_split)
    else:
        documents = [document for path in source.paths for document in file_documents(path)]
    if not documents:
        raise ValueError("data: the source holds no non-blank documents")
    return documents
