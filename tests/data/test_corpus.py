from pathlib import Path

import pytest

from lowcomm.data.corpus import file_documents, jsonl_documents, read_documents, txt_documents
from lowcomm.data.spec import parse_data_spec

KJV = Path(__file__).resolve().parents[2].parent / "shared/data/kjv.txt"


def test_txt_paragraphs_split_on_blank_lines():
    text = "Once upon a time\nthere was a cat.\n\n  \nThe end.\n\n\n"
    assert txt_documents(text) == ["Once upon a time\nthere was a cat.", "The end."]


def test_txt_without_blank_lines_has_one_document_per_line():
    assert txt_documents("In the beginning.\n  And light.\n\n") == ["In the beginning.", "And light."]
    assert txt_documents("one\r\ntwo\r\n") == ["one", "two"]


def test_jsonl_reads_the_text_field_and_skips_blank_lines_and_texts():
    text = '{"text": "first", "id": 1}\n\n{"text": "  "}\n{"text": "second\\nline"}\n'
    assert jsonl_documents(text, Path("x.jsonl")) == ["first", "second\nline"]


@pytest.mark.parametrize(
    ("line", "message"),
    [("{not json", r"x.jsonl:2 is not valid JSON"), ('{"body": "x"}', r"x.jsonl:2 has no string 'text' field")],
)
def test_jsonl_names_the_bad_line(line, message):
    with pytest.raises(ValueError, match=message):
        jsonl_documents('{"text": "fine"}\n' + line + "\n", Path("x.jsonl"))


def test_files_of_a_glob_are_read_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "from b"}\n')
    (tmp_path / "a.txt").write_text("a1\na2\n")
    assert read_documents(parse_data_spec(str(tmp_path / "*"))) == ["a1", "a2", "from b"]


def test_invalid_utf8_past_the_sniffed_prefix_is_a_value_error(tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"x" * 2**17 + b"\xff")
    with pytest.raises(ValueError, match="cannot read .*late.txt as UTF-8 text"):
        file_documents(path)


@pytest.mark.skipif(not KJV.exists(), reason=f"{KJV} not present")
def test_kjv_has_one_document_per_verse():
    verses = read_documents(parse_data_spec(str(KJV)))
    assert len(verses) == 31102
    assert verses[0] == "In the beginning God created the heaven and the earth."
