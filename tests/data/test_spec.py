import os
from pathlib import Path

import pytest

from lowcomm.data import validate_data_spec
from lowcomm.data.spec import DataSource, parse_data_spec


def rejects(data: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        validate_data_spec(data)
    assert "\n" not in str(raised.value)


def test_synthetic_and_hf_specs_parse_without_loading():
    assert parse_data_spec("synthetic-stories") == DataSource("synthetic-stories")
    assert parse_data_spec("synthetic-images") == DataSource("synthetic-images")
    assert parse_data_spec("hf:roneneldan/TinyStories") == DataSource("hf", hf_name="roneneldan/TinyStories")
    assert parse_data_spec("hf:roneneldan/TinyStories:train[:1000]") == DataSource(
        "hf", hf_name="roneneldan/TinyStories", hf_split="train[:1000]"
    )


def test_bad_names_are_rejected():
    rejects("synthetic-poems", "unknown synthetic dataset 'synthetic-poems'")
    rejects("hf:", "names no dataset")


def test_missing_files_and_empty_globs_are_rejected(tmp_path):
    rejects(str(tmp_path / "absent.txt"), "no such file")
    rejects(str(tmp_path / "*.jsonl"), "no file matches")


def test_a_glob_yields_its_text_files_in_name_order(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    assert parse_data_spec(str(tmp_path / "*")).paths == tuple(tmp_path / n for n in ("a.txt", "b.txt", "c.jsonl"))


def test_empty_binary_and_foreign_files_are_rejected(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "notes.csv").write_text("a,b\n")
    rejects(str(tmp_path / "empty.txt"), "empty.txt is empty")
    rejects(str(tmp_path / "blank.txt"), "blank.txt is empty")
    rejects(str(tmp_path / "binary.txt"), "binary.txt is not UTF-8 text")
    rejects(str(tmp_path / "latin1.txt"), "latin1.txt is not UTF-8 text")
    rejects(str(tmp_path / "notes.csv"), r"notes.csv is not a .txt or .jsonl file")
    rejects(str(tmp_path / "*.txt"), "blank.txt is empty")  # the cheap checks of every file come first


def test_a_multibyte_character_cut_at_the_sniffed_prefix_is_fine(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("x" * (2**16 - 1) + "é and more")
    validate_data_spec(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_rejected(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("hello")
    path.chmod(0)
    rejects(str(path), "cannot read")


def write_png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_image_folders_need_two_classes_of_images(tmp_path):
    write_png(tmp_path / "cats" / "1.png")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "readme.txt").write_text("no images here")
    rejects(str(tmp_path), "needs at least two class subfolders .* found 1")
    write_png(tmp_path / "dogs" / "2.PNG")
    assert parse_data_spec(str(tmp_path)) == DataSource("image-folder", paths=(tmp_path,))
