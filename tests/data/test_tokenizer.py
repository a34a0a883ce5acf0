import pytest
from tokenizers import Tokenizer, models

from lowcomm.data.stories import generate_stories
from lowcomm.data.tokenizer import END_OF_TEXT, cached_byte_level_bpe, load_tokenizer

STORIES = generate_stories(300)


def test_trained_bpe_is_cached_by_text_and_vocab_size(tmp_path):
    first = cached_byte_level_bpe(STORIES, 300, tmp_path)
    (path,) = tmp_path.glob("bpe-300-*.json")
    written = path.stat().st_mtime_ns
    second = cached_byte_level_bpe(STORIES, 300, tmp_path)
    assert path.stat().st_mtime_ns == written  # loaded, not trained and written again
    assert second.backend.get_vocab() == first.backend.get_vocab()
    cached_byte_level_bpe(STORIES, 320, tmp_path)
    cached_byte_level_bpe(STORIES[:-1], 300, tmp_path)
    assert len(list(tmp_path.glob("bpe-*.json"))) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_trained_bpe_has_the_asked_vocabulary_and_round_trips_any_text(tmp_path):
    tokenizer = cached_byte_level_bpe(STORIES, 300, tmp_path)
    # 256 byte symbols + end-of-text + 43 merges
    assert tokenizer.vocab_size == 300
    assert tokenizer.end_of_text_id == tokenizer.backend.token_to_id(END_OF_TEXT) == 0
    (ids,) = tokenizer.encode(["Zoë’s naïve café ✓"])
    assert tokenizer.backend.decode(ids) == "Zoë’s naïve café ✓"
    (story_ids,) = tokenizer.encode([STORIES[0]])
    assert len(story_ids) < 0.7 * len(STORIES[0].encode())  # merges learnt from the stories


def test_vocab_size_must_exceed_the_byte_alphabet(tmp_path):
    with pytest.raises(ValueError, match="vocab_size: must exceed the 256 byte symbols, got 256"):
        cached_byte_level_bpe(STORIES, 256, tmp_path)


def test_tokenizer_json_path_loads_with_its_end_of_text_token(tmp_path):
    cached_byte_level_bpe(STORIES, 300, tmp_path)
    (path,) = tmp_path.glob("bpe-*.json")
    tokenizer = load_tokenizer(str(path))
    assert (tokenizer.vocab_size, tokenizer.end_of_text_id) == (300, 0)


def test_tokenizer_json_without_end_of_text_or_missing_is_rejected(tmp_path):
    bare = tmp_path / "bare.json"
    Tokenizer(models.BPE()).save(str(bare))
    with pytest.raises(ValueError, match="bare.json has no end-of-text token"):
        load_tokenizer(str(bare))
    with pytest.raises(ValueError, match="tokenizer: cannot load .*absent.json"):
        load_tokenizer(str(tmp_path / "absent.json"))


def test_a_local_pretrained_folder_loads_through_auto_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = cached_byte_level_bpe(STORIES, 300, tmp_path / "cache")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token=END_OF_TEXT).save_pretrained(tmp_path / "tok")
    pretrained = load_tokenizer(str(tmp_path / "tok"))
    assert (pretrained.vocab_size, pretrained.end_of_text_id) == (300, 0)
    assert pretrained.encode(["Lily had a ball."]) == tokenizer.encode(["Lily had a ball."])
