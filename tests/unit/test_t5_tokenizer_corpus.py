"""T5 tokenization against ids the release's own tokenizer gave, committed in tests/data.

``tests/data/t5_tokenizer_corpus.json`` holds ~500 texts (whitespace runs, unicode forms, emoji,
control characters, special-token strings and near misses, prompts beyond 256 ids) with the ids
transformers 4.x's slow ``T5Tokenizer`` gave for them on ComfyUI's bundled T5 vocabulary;
``scripts/make_t5_tokenizer_corpus.py`` regenerates it. transformers 5 cannot produce them: the
corpus is the reference, and llm4gen_core's tokenizer must give exactly these ids.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llm4gen_core.tokenization import load_t5_tokenizer
from synthetic.comfy_env import comfy_t5_tokenizer

CORPUS = Path(__file__).resolve().parents[1] / "data" / "t5_tokenizer_corpus.json"
SPECIAL_TEXT = ("</s>", "<pad>", "<unk>", "<extra_id_")


@pytest.fixture(scope="module")
def corpus() -> dict:
    return json.loads(CORPUS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer_folder(corpus) -> Path:
    folder = comfy_t5_tokenizer()
    if folder is None:
        pytest.skip("ComfyUI's t5_tokenizer folder is not installed")
    digest = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
    if digest != corpus["tokenizer_sha256"]:
        pytest.skip(f"{folder / 'tokenizer.json'} is not the file the corpus was made from (sha256 {digest[:12]}...)")
    return folder


def test_corpus_covers_the_edges(corpus):
    """What the corpus claims to hold, it holds: enough cases of each kind to mean something."""
    cases = corpus["cases"]
    texts = [t for t, _ in cases]
    assert corpus["reference"].startswith("transformers 4.") and "T5Tokenizer" in corpus["reference"]
    assert 450 <= len(cases) <= 550 and len(set(texts)) == len(texts)  # README.md: about 500
    assert CORPUS.stat().st_size < 300_000
    assert all(ids and ids[-1] == 1 and all(0 <= i < 32100 for i in ids) for _, ids in cases)
    kinds = {
        "special-token text": [t for t in texts if any(s in t for s in SPECIAL_TEXT)],
        "whitespace runs": [t for t in texts if any(w in t for w in ("  ", "\n\n", "\t", "\u3000", "\u00a0"))],
        "non-ASCII": [t for t in texts if any(ord(c) > 127 for c in t)],
        "emoji": [t for t in texts if any(ord(c) > 0xFFFF for c in t)],
        "control characters": [t for t in texts if any(ord(c) < 32 and c not in "\t\n\r" for c in t)],
        "the release's prefix": [t for t in texts if t.startswith("pre ")],
    }
    for kind, found in kinds.items():
        assert len(found) >= 10, f"only {len(found)} texts with {kind}"
    longest = max(len(ids) for _, ids in cases)
    assert longest > 1000, "a prompt far beyond the release's 256 ids"
    assert sum(1 for t in texts if t.rstrip().endswith("</s>")) >= 5, "texts ending in </s>: no second one added"
    assert [ids for t, ids in cases if t == ""] == [[1]]


@pytest.mark.parametrize("layout", ["tokenizer.json", "spiece.model"])
def test_llm4gen_core_gives_the_release_tokenizers_ids(corpus, tokenizer_folder, layout, tmp_path):
    """ComfyUI's tokenizer.json as it ships, and the same vocabulary as a spiece.model folder (the
    layout google/t5-v1_1-xl ships: the sentinels are then numbered by the loader, not the file)."""
    if layout == "spiece.model":
        from llm4gen_core.tokenization import _spm_proto_from_tokenizer_json

        proto, _ = _spm_proto_from_tokenizer_json(tokenizer_folder / "tokenizer.json")
        (tmp_path / "spiece.model").write_bytes(proto)
        tokenizer_folder = tmp_path
    tok = load_t5_tokenizer(tokenizer_folder)
    assert tok.source.endswith(layout)
    wrong = [(text, tok.tokenize(text), ids) for text, ids in corpus["cases"] if tok.tokenize(text) != ids]
    report = "\n".join(f"  {text[:60]!r}: ours {ours[:12]} expected {ids[:12]}" for text, ours, ids in wrong[:8])
    assert not wrong, f"{len(wrong)} of {len(corpus['cases'])} texts tokenize differently:\n{report}"


def test_the_release_rule_on_the_corpus(corpus, tokenizer_folder):
    """Prefix, </s>, cut to 256 or pad with 0, through LLMEncoder.tokenize: for the corpus' texts that
    start with the release's "pre ", the ids are the corpus ids cut or padded to 256."""
    import torch

    from llm4gen_core.llm import LLMEncoder

    class NoModel(torch.nn.Module):  # tokenize never runs the model
        config = type("Config", (), {"d_model": 8})()

    llm = LLMEncoder(NoModel(), load_t5_tokenizer(tokenizer_folder), "t5-encoder", "pre ", -1, "corpus")
    cases = [(t.removeprefix("pre "), ids) for t, ids in corpus["cases"] if t.startswith("pre ")]
    input_ids, mask, counts, truncated = llm.tokenize([t for t, _ in cases])
    for row, (text, ids) in enumerate(cases):
        kept = ids[:256]
        assert input_ids[row].tolist() == kept + [0] * (256 - len(kept)), text[:60]
        assert mask[row].tolist() == [1] * len(kept) + [0] * (256 - len(kept)), text[:60]
        assert counts[row] == len(ids) and truncated[row] == (len(ids) > 256)
    assert any(truncated) and not all(truncated)
