"""T5 tokenization exactly as the release's slow sentencepiece T5Tokenizer (transformers 4.x).

References are computed here with the sentencepiece library itself (``encode`` + ``</s>``), with
the ``tokenizers`` library, and with the installed transformers, never through llm4gen_core.
"""
import json
import re

import pytest
import sentencepiece as spm

from llm4gen_core import LLMLoadError
from llm4gen_core.tokenization import HFTokenizer, SentencePieceTokenizer, load_t5_tokenizer
from synthetic.llm import tiny_bpe_tokenizer, tiny_spm_tokenizer, tiny_t5_tokenizer_json
from synthetic.comfy_env import comfy_t5_tokenizer

# Whitespace edge cases, unicode, emoji, the release's own example prompt (leading/trailing "\n").
PLAIN = [
    "", " ", "   ", "\n", "\t", "a", "A photo of a cat", "trailing space ", "trailing spaces   ", " leading",
    "   leading spaces", "multiple   inner    spaces", "new\nline", "a  \n  b", "\n\n\n", "tab\tseparated",
    "crlf\r\nline", "nbsp\u00a0here", "zero\u200bwidth", "ideographic\u3000space", "naïve café résumé",
    "combining e\u0301", "Straße ÜBER", "日本語 東京", "中文提示词：一只猫", "привет мир", "emoji 😀🐱‍👤 👍🏽",
    "ﬁ ligature ① ½ ²", "fullwidth ＡＢＣ １２３", "quotes “smart” — dash … ellipsis", "▁underscore▁char",
    "control\x07bell", "<s> is not special for T5", "pre", "1234567890 3.14",
    "\nGround view of the Great Pyramids and Sphinx on the moon's surface. The back of an astronaut is in the "
    "foreground. The planet Earth looms in the sky.\n",
]
WITH_SPECIALS = ["literal </s> inside", "<unk> first", "x<extra_id_0>y", "<extra_id_5> start", "end <pad>",
                 "two</s></s>", "ends with </s>"]


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory):
    return tiny_spm_tokenizer(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def sp(spm_folder):
    return spm.SentencePieceProcessor(model_file=str(spm_folder / "spiece.model"))


def reference_ids(sp, text, specials):
    """transformers 4.x slow T5Tokenizer, written out: special-token strings cut out first, each
    other piece through sentencepiece, </s> added unless the ids already end with it."""
    ids = []
    pattern = "(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")"
    for chunk in re.split(pattern, text):
        if chunk in specials:
            ids.append(specials[chunk])
        elif chunk:
            ids.extend(sp.encode(chunk))
    return ids if ids and ids[-1] == 1 else ids + [1]


@pytest.mark.parametrize("text", PLAIN)
def test_plain_text_is_sentencepiece_encode_plus_eos(spm_folder, sp, text):
    tok = load_t5_tokenizer(spm_folder)
    assert tok.tokenize("pre " + text) == sp.encode("pre " + text) + [1]
    assert tok.tokenize(text) == sp.encode(text) + [1]


def test_empty_prompt_is_pre_and_eos(spm_folder, sp):
    tok = load_t5_tokenizer(spm_folder)
    assert tok.tokenize("pre ") == sp.encode("pre") + [1]
    assert tok.tokenize("") == [1]


def test_special_token_strings_map_to_their_ids(spm_folder, sp):
    tok = load_t5_tokenizer(spm_folder)
    size = sp.get_piece_size()
    specials = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"<extra_id_{i}>": size + 99 - i for i in range(100)}}
    for text in WITH_SPECIALS:
        assert tok.tokenize("pre " + text) == reference_ids(sp, "pre " + text, specials), text
    assert tok.tokenize("x<extra_id_0>")[-2:] == [size + 99, 1]
    assert tok.tokenize("ends with </s>").count(1) == 1
    assert tok.vocab_size == size + 100


def test_tokenizer_json_only_folder_equals_the_sentencepiece_model(spm_folder, sp, tmp_path):
    """spiece.model -> tokenizer.json by transformers' converter -> back: same ids as sentencepiece."""
    folder = tiny_t5_tokenizer_json(tmp_path / "tj", spm_folder)
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok = load_t5_tokenizer(folder)
    assert tok.source.endswith("tokenizer.json")
    for text in PLAIN:
        assert tok.tokenize("pre " + text) == sp.encode("pre " + text) + [1], text
    file_tok = load_t5_tokenizer(folder / "tokenizer.json")
    assert file_tok.tokenize("pre a cat") == tok.tokenize("pre a cat")
    assert tok.vocab_size == sp.get_piece_size() + 100


def test_sentencepiece_file_given_directly(spm_folder, sp):
    tok = load_t5_tokenizer(spm_folder / "spiece.model")
    assert tok.tokenize("pre a cat") == sp.encode("pre a cat") + [1]


def test_extra_ids_follow_tokenizer_config(spm_folder, sp, tmp_path):
    (tmp_path / "spiece.model").write_bytes((spm_folder / "spiece.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": 0}))
    tok = load_t5_tokenizer(tmp_path)
    assert tok.vocab_size == sp.get_piece_size()
    assert tok.tokenize("<extra_id_0>") == sp.encode("<extra_id_0>") + [1]


@pytest.mark.parametrize("extra_ids", [0, 1000, 1001, -1, True, "100"])
def test_extra_ids_from_0_to_1000_are_accepted(spm_folder, sp, tmp_path, extra_ids):
    """README-safety.md: extra_ids outside 0..1000 is refused (each is a token held and matched)."""
    (tmp_path / "spiece.model").write_bytes((spm_folder / "spiece.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"extra_ids": extra_ids}))
    if type(extra_ids) is int and 0 <= extra_ids <= 1000:
        tok = load_t5_tokenizer(tmp_path)
        assert tok.vocab_size == sp.get_piece_size() + extra_ids
    else:
        with pytest.raises(LLMLoadError, match=r"tokenizer_config\.json: extra_ids must be a whole number from 0 to 1000"):
            load_t5_tokenizer(tmp_path)


def test_a_bpe_tokenizer_json_is_refused_for_t5(tmp_path):
    folder = tiny_bpe_tokenizer(tmp_path / "bpe")
    with pytest.raises(LLMLoadError, match=r"tokenizer\.json: a BPE tokenizer.*Unigram"):
        load_t5_tokenizer(folder)


def test_missing_or_broken_tokenizers_are_clear_errors(tmp_path):
    with pytest.raises(LLMLoadError, match="no T5 tokenizer here"):
        load_t5_tokenizer(tmp_path)
    with pytest.raises(LLMLoadError, match="tokenizer not found"):
        load_t5_tokenizer(tmp_path / "nope")
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(LLMLoadError, match="spiece.model: not a sentencepiece model"):
        load_t5_tokenizer(tmp_path)
    (tmp_path / "spiece.model").unlink()
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(LLMLoadError, match="unreadable tokenizer.json"):
        load_t5_tokenizer(tmp_path)


def test_hf_tokenizer_plain_and_chat(tmp_path):
    from tokenizers import Tokenizer

    folder = tiny_bpe_tokenizer(tmp_path / "bpe")
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert HFTokenizer(folder).tokenize("a cat") == raw.encode("a cat").ids
    chat = HFTokenizer(folder, "chat").tokenize("a cat")
    assert chat == raw.encode("<s>[user] a cat</s>", add_special_tokens=False).ids
    with pytest.raises(LLMLoadError, match="template must be"):
        HFTokenizer(folder, "fancy")


# ---- ComfyUI's bundled T5 tokenizer (tokenizer.json of the real T5 v1.1 vocabulary) -------------

COMFY_T5 = comfy_t5_tokenizer()
needs_comfy = pytest.mark.skipif(COMFY_T5 is None, reason="ComfyUI's t5_tokenizer folder is not installed")


@needs_comfy
def test_comfyui_t5_tokenizer_matches_the_tokenizers_library_on_plain_text():
    """Independent reference: HF's Rust Unigram on the same tokenizer.json."""
    from tokenizers import Tokenizer

    ours = load_t5_tokenizer(COMFY_T5)
    rust = Tokenizer.from_file(str(COMFY_T5 / "tokenizer.json"))
    assert ours.vocab_size == 32100
    for text in PLAIN:
        assert ours.tokenize("pre " + text) == rust.encode("pre " + text).ids, text


@needs_comfy
def test_comfyui_t5_tokenizer_pieces_of_the_empty_prompt():
    """The release's negative prompt "" is "pre " -> the pieces ▁pre, </s>; T5's sentinels count
    down from 32099 (<extra_id_0>) after the 32000 sentencepiece ids."""
    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(COMFY_T5 / "tokenizer.json"))
    ours = load_t5_tokenizer(COMFY_T5)
    assert [rust.id_to_token(i) for i in ours.tokenize("pre ")] == ["▁pre", "</s>"]
    assert ours.tokenize("pre x<extra_id_0>")[-2:] == [32099, 1]
    assert ours.processor.get_piece_size() == 32000


@needs_comfy
def test_comfyui_t5_tokenizer_matches_transformers_with_special_tokens():
    from transformers import AutoTokenizer

    ours = load_t5_tokenizer(COMFY_T5)
    theirs = AutoTokenizer.from_pretrained(str(COMFY_T5), local_files_only=True)
    for text in WITH_SPECIALS + PLAIN:
        expected = theirs("pre " + text)["input_ids"]
        if text.endswith("</s>"):  # 4.x's slow tokenizer does not add a second </s>; 5.x does
            expected = expected[:-1]
        assert ours.tokenize("pre " + text) == expected, text


def test_sentencepiece_tokenizer_rejects_a_model_without_eos():
    import io

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g"] * 20), model_writer=buf, vocab_size=12,
                                   eos_id=-1, bos_id=-1, pad_id=-1, unk_id=0, minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(LLMLoadError, match="no end token"):
        SentencePieceTokenizer(buf.getvalue(), {}, "nameless.model")
