"""Parse a ``--data`` spec and run the cheap checks on it before any worker starts.

A spec is one of: ``synthetic-stories``, ``synthetic-images``, ``hf:NAME[:SPLIT]`` (checked when
loaded), a directory of class folders (``root/<class_name>/*.png|jpg``), or a ``.txt`` / ``.jsonl``
file or glob of them.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Literal

from lowcomm.data.split import HELD_OUT_FRACTION, first_held_out

SYNTHETIC = ("synthetic-stories", "synthetic-images")
TEXT_SUFFIXES = (".txt", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SNIFF_BYTES = 1 << 16
STREAM_BYTES = 1 << 20

SourceKind = Literal["synthetic-stories", "synthetic-images", "hf", "text-files", "image-folder"]


@dataclass(frozen=True)
class DataSource:
    """What a spec names: its kind, plus the files (text files, or the image folder's root) or the
    HF dataset's name and split."""

    kind: SourceKind
    paths: tuple[Path, ...] = ()
    hf_name: str = ""
    hf_split: str = "train"


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def class_folders(root: Path) -> dict[str, list[Path]]:
    """The image files of each class folder under ``root``, classes and files sorted by name."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[folder.name] = files
    if len(classes) < 2:
        raise ValueError(
            f"data: image folder {root} needs at least two class subfolders holding "
            f"{'/'.join(IMAGE_SUFFIXES)} images, found {len(classes)}"
        )
    return classes


def check_text_file(path: Path) -> None:
    """Raise unless ``path`` is a readable, non-empty ``.txt`` or ``.jsonl`` file (judged from its
    first 64 KiB; :func:`scan_text_file` reads it whole)."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise ValueError(f"data: {path} is not a {' or '.join(TEXT_SUFFIXES)} file")
    try:
        with path.open("rb") as file:
            head = file.read(SNIFF_BYTES)
    except OSError as error:
        raise ValueError(f"data: cannot read {path}: {one_line(error)}") from error
    if not head.strip():
        raise ValueError(f"data: {path} is empty")


@dataclass
class TextCount:
    """What a streamed read of a text file counts: its bytes and documents (as
    :func:`lowcomm.data.corpus.file_documents` splits it)."""

    bytes: int = 0
    documents: int = 0
    lines_with_text: int = 0
    paragraphs_with_text: int = 0
    in_paragraph: bool = False
    paragraph_has_text: bool = False

    def add_line(self, line: str) -> None:
        """Count one line (without its end) of a ``.txt`` file: paragraphs are separated by lines
        of spaces and tabs only; a text of one paragraph has one document per line."""
        has_text = bool(line.strip())
        self.lines_with_text += sum(1 for piece in line.splitlines() if piece.strip())  # as str.splitlines splits
        if line.strip(" \t\r\f\v"):
            self.in_paragraph, self.paragraph_has_text = True, self.paragraph_has_text or has_text
        else:
            self.end_paragraph()

    def end_paragraph(self) -> None:
        self.paragraphs_with_text += self.in_paragraph and self.paragraph_has_text
        self.in_paragraph = self.paragraph_has_text = False

    def txt_documents(self) -> int:
        self.end_paragraph()
        return self.paragraphs_with_text if self.paragraphs_with_text > 1 else self.lines_with_text


def decoded_chunks(path: Path) -> Iterator[str]:
    """``path``'s text, read and decoded 1 MiB at a time; a ValueError naming the byte offset of the
    first NUL byte or invalid UTF-8."""
    offset, carry = 0, b""
    with path.open("rb") as file:
        while chunk := file.read(STREAM_BYTES):
            data = carry + chunk
            nul = data.find(b"\0")
            if nul >= 0:
                raise ValueError(f"data: {path} is not UTF-8 text (binary file?): a NUL byte at byte {offset + nul}")
            try:
                text, carry = data.decode("utf-8"), b""
            except UnicodeDecodeError as error:
                if error.end < len(data) or error.reason != "unexpected end of data" or len(data) - error.start > 3:
                    raise ValueError(f"data: {path} is not UTF-8 text (binary file?): invalid UTF-8 at byte "
                                     f"{offset + error.start}") from None
                text, carry = data[: error.start].decode("utf-8"), data[error.start :]
            yield text
            offset += len(data) - len(carry)
    if carry:
        raise ValueError(f"data: {path} is not UTF-8 text (binary file?): invalid UTF-8 at byte {offset}")


def scan_text_file(path: Path) -> TextCount:
    """Read ``path`` whole, streamed: refuse a NUL byte, invalid UTF-8 or (``.jsonl``) an invalid
    line with one line naming where; count its bytes and documents."""
    count, pending, number = TextCount(bytes=path.stat().st_size), "", 0
    jsonl = path.suffix.lower() == ".jsonl"
    for text in [*decoded_chunks(path), None]:
        if text is None:  # the end: the last line, if it has no line end
            lines = universal_lines(pending) if pending else []
        else:
            text = pending + text
            held = "\r" if text.endswith("\r") else ""  # perhaps the first half of a \r\n
            lines = universal_lines(text.removesuffix(held))
            pending = lines.pop() + held
        for line in lines:
            number += 1
            if jsonl:
                count.documents += jsonl_text(line, path, number) is not None
            else:
                count.add_line(line)
    if not jsonl:
        count.documents = count.txt_documents()
    return count


def universal_lines(text: str) -> list[str]:
    """``text`` split at its line ends, as Python's text files read them (\\n, \\r\\n or \\r)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def jsonl_text(line: str, path: Path, number: int) -> str | None:
    """The ``"text"`` field of JSON line ``number`` (None for a blank line or blank text)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"data: {path}:{number} is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"data: {path}:{number} has no string 'text' field")
    return record["text"] if record["text"].strip() else None


def jsonl_documents(text: str, path: Path) -> list[str]:
    """The ``"text"`` field of each JSON line."""
    texts = (jsonl_text(line, path, number) for number, line in enumerate(text.split("\n"), start=1))
    return [text for text in texts if text is not None]


def check_text_corpus(data: str, paths: tuple[Path, ...], seq_len: int, workers: int, own_tokenizer: bool) -> None:
    """Read the files of the ``--data`` spec ``data`` whole (:func:`scan_text_file`) and refuse, in
    one line that says what is needed, a corpus too small to hold a document out for evaluation or,
    with lowcomm's byte-level BPE (a token is at least one byte, plus one end-of-text per document),
    to fill a window of ``seq_len + 1`` tokens for each of ``workers`` and one held out."""
    counts = [scan_text_file(path) for path in paths]
    documents = sum(count.documents for count in counts)
    first = first_held_out()
    if documents <= first:
        raise ValueError(f"data: {data} holds {documents} document{'' if documents == 1 else 's'}; the held-out "
                         f"split needs at least {first + 1} (about {HELD_OUT_FRACTION:.0%} are held out, the first "
                         f"being document {first + 1}); use more data")
    most, needed = sum(count.bytes for count in counts) + documents, (workers + 1) * seq_len + 2
    if own_tokenizer and most < needed:
        raise ValueError(f"data: {data} holds at most {most} tokens; --seq-len {seq_len} with {workers} "
                         f"worker{'' if workers == 1 else 's'} needs at least {needed} (a window of {seq_len + 1} "
                         "tokens for each worker and one held out); use more data or a smaller --seq-len")


def parse_data_spec(data: str) -> DataSource:
    """The source a spec names, after the checks that need no loading."""
    if data.startswith("synthetic-"):
        if data not in SYNTHETIC:
            raise ValueError(f"data: unknown synthetic dataset {data!r}; choose one of {', '.join(SYNTHETIC)}")
        return DataSource(data)
    if data.startswith("hf:"):
        name, _, split = data.removeprefix("hf:").partition(":")
        if not name:
            raise ValueError(f"data: {data!r} names no dataset; write hf:NAME[:SPLIT], e.g. hf:roneneldan/TinyStories")
        return DataSource("hf", hf_name=name, hf_split=split or "train")
    path = Path(data).expanduser()
    if path.is_dir():
        class_folders(path)
        return DataSource("image-folder", paths=(path,))
    if path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        is_glob = any(char in data for char in "*?[")
        raise ValueError(f"data: no file matches {data!r}" if is_glob else f"data: no such file {data!r}")
    for file in files:
        check_text_file(file)
    return DataSource("text-files", paths=tuple(files))


def validate_data_spec(data: str) -> None:
    """Raise ValueError (one line) if ``data`` cannot name a dataset: an unknown synthetic name, a
    missing file or a glob matching none, an empty or unreadable file, a text file with a NUL byte,
    invalid UTF-8 or an invalid JSON line anywhere (read whole, streamed), or an image folder without
    class folders. ``hf:`` specs are checked when loaded."""
    source = parse_data_spec(data)
    for path in source.paths if source.kind == "text-files" else ():
        scan_text_file(path)
