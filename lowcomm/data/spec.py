"""Parse a ``--data`` spec and run the cheap checks on it before any worker starts.

A spec is one of: ``synthetic-stories``, ``synthetic-images``, ``hf:NAME[:SPLIT]`` (checked when
loaded), a directory of class folders (``root/<class_name>/*.png|jpg``), or a ``.txt`` / ``.jsonl``
file or glob of them.
"""

from __future__ import annotations

import codecs
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SYNTHETIC = ("synthetic-stories", "synthetic-images")
TEXT_SUFFIXES = (".txt", ".jsonl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SNIFF_BYTES = 1 << 16

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
    """Raise unless ``path`` is a readable, non-empty, UTF-8 ``.txt`` or ``.jsonl`` file (judged
    from its first 64 KiB)."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise ValueError(f"data: {path} is not a {' or '.join(TEXT_SUFFIXES)} file")
    try:
        with path.open("rb") as file:
            head = file.read(SNIFF_BYTES)
    except OSError as error:
        raise ValueError(f"data: cannot read {path}: {one_line(error)}") from error
    if not head.strip():
        raise ValueError(f"data: {path} is empty")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        raise ValueError(f"data: {path} is not UTF-8 text (binary file?)") from None
    if b"\0" in head:
        raise ValueError(f"data: {path} is not UTF-8 text (binary file?)")
    if path.suffix.lower() == ".jsonl":
        whole_lines = head if len(head) < SNIFF_BYTES else head[: head.rfind(b"\n") + 1]
        jsonl_documents(whole_lines.decode("utf-8"), path)


def jsonl_documents(text: str, path: Path) -> list[str]:
    """The ``"text"`` field of each JSON line."""
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"data: {path}:{number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"data: {path}:{number} has no string 'text' field")
        if record["text"].strip():
            documents.append(record["text"])
    return documents


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
    missing file or a glob matching none, an empty, unreadable or binary file, or an image folder
    without class folders. ``hf:`` specs are checked when loaded."""
    parse_data_spec(data)
