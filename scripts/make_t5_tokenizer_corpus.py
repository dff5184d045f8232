"""Regenerate tests/data/t5_tokenizer_corpus.json: T5 token ids as the release's tokenizer gives them.

The release tokenized with transformers 4.x's slow sentencepiece ``T5Tokenizer`` (legacy mode).
transformers 5 no longer has it, so the expected ids are made once, here, by that tokenizer running
in a side environment with transformers 4.x, and committed; ``tests/unit/test_t5_tokenizer_corpus.py``
compares llm4gen_core's tokenizer with them on every CI run.

    python3 -m venv /tmp/tf4 && /tmp/tf4/bin/pip install "transformers<5" sentencepiece protobuf
    .venv/bin/python -m scripts.make_t5_tokenizer_corpus --tf4-python /tmp/tf4/bin/python

Vocabulary: ComfyUI's bundled T5 tokenizer (``comfy/text_encoders/t5_tokenizer/tokenizer.json``,
the T5 v1.1 vocabulary), the one the tests and the nodes use. The slow tokenizer needs a
sentencepiece model file, which ComfyUI does not ship: it is rebuilt from tokenizer.json (pieces,
scores, normalisation table). Before anything is written, the rebuilt model is checked against
an implementation that does not go through it: on every string without special-token text, the
slow tokenizer's ids must equal the ``tokenizers`` library's on the tokenizer.json itself.

The strings are fixed by this file (hand-picked edge cases, then a seeded random mix of atoms),
so a rerun with the same tokenizer and transformers version writes the same file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from llm4gen_core.tokenization import _spm_proto_from_tokenizer_json

from .comfyui_host import comfyui_root

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "tests" / "data" / "t5_tokenizer_corpus.json"
SPECIAL_TEXT = ("</s>", "<pad>", "<unk>", "<extra_id_")
RELEASE_PROMPT = ("\nGround view of the Great Pyramids and Sphinx on the moon's surface. The back of an astronaut "
                  "is in the foreground. The planet Earth looms in the sky.\n")


class CorpusError(RuntimeError):
    """The reference environment cannot make the corpus (not transformers 4.x). ``main()`` prints
    the message and exits with status 2."""


EDGE_CASES = [
    # empty, whitespace runs and kinds
    "", " ", "  ", "   ", "\n", "\n\n\n", "\t", "\t\t", "\r\n", "\r", " \n \t ", "\u00a0", "\u3000", "\u2003",
    "\u200b", "\ufeff", "a b", "a  b", "a   b", "a\tb", "a\nb", "a \n b", "a\u00a0b", "a\u3000b", "a\u200bb",
    "trailing ", "trailing   ", " leading", "   leading", "  both  ", "line one\nline two\n", "crlf\r\nline",
    # case, digits, punctuation
    "A photo of a cat", "UPPER CASE", "MiXeD CaSe", "1234567890", "3.14159", "1,000,000", "2024-11-23",
    "v1.5", "x=y+z*2", "a.b.c", "!!!", "???", "...", "—–-", "(a) [b] {c}", "'single' \"double\"",
    "“smart quotes” ‘single’", "it's", "don't", "#hashtag @mention", "https://example.com/a?b=c&d=e",
    "e-mail: someone@example.com", "C:\\path\\to\\file", "50% off", "$5 €5 £5 ¥5", "a/b\\c|d", "~`^_",
    "_underscore_", "▁", "▁▁", "▁pre", "a▁b",
    # unicode: accents, composed and decomposed forms, compatibility forms, scripts, emoji
    "naïve café résumé", "e\u0301", "cafe\u0301", "Straße ÜBER", "ﬁ ﬂ ligatures", "① ② ③", "½ ¼ ¾", "x² y³",
    "ＡＢＣ １２３", "ｶﾀｶﾅ", "Å Å", "Ω Ω", "µ μ", "™ ©", "日本語", "東京タワー", "中文提示词：一只猫",
    "한국어 문장", "привет мир", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ภาษาไทย", "emoji 😀",
    "🐱\u200d👤", "👍🏽", "🇫🇷", "❤️", "a😀b", "\x07bell", "\x00nul", "\x1b[31mred", "\u202eright-to-left",
    # special-token strings: alone, inside words, repeated, at the ends; near misses
    "</s>", "<pad>", "<unk>", "<extra_id_0>", "<extra_id_99>", "<extra_id_42>", "<extra_id_100>",
    "<extra_id_-1>", "<extra_id_>", "literal </s> inside", "x</s>y", "two</s></s>", "ends with </s>",
    "</s> starts", "<pad><pad><pad>", "a <pad> b", "<unk> first", "x<extra_id_0>y", "<extra_id_5> start",
    "end <extra_id_7>", "a<extra_id_1><extra_id_2>b", "</S>", "< /s>", "</s >", "<s>", "<s> is not special",
    "<mask>", "<|endoftext|>", "[CLS] [SEP]", "<", ">", "</", "/s>", "<<</s>>>", "</s></s>",
    " </s> ", "\n</s>\n", "<pad>\n", "pre </s>", "pre", "pre ", "prefix", "suffi ",
    # prompts
    RELEASE_PROMPT, RELEASE_PROMPT.strip(),
    "A highly detailed oil painting of a lighthouse on a cliff at sunset, waves crashing, seagulls, "
    "dramatic clouds, warm golden light, by a master of the Romantic era",
    "(masterpiece:1.2), best quality, (red hat:1.3), ((blue eyes)), [background], embedding:my_style",
    "a cat, a dog; a bird: a fish / a horse | a cow",
]
ATOMS = ["a", "cat", "The", "photo", " ", "  ", "   ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "é", "e\u0301", "ß",
         "日本", "猫", "мир", "😀", "🐱\u200d👤", "ﬁ", "①", "Ａ", ".", ",", "'", "\"", "-", "(", ")", ":", "1.3",
         "</s>", "<pad>", "<unk>", "<extra_id_0>", "<extra_id_42>", "<extra_id_99>", "<s>", "▁", "_", "0", "42",
         "\u200b", "\x07", "<", ">", "/", "pre", "pre ", "Sphinx", "moon's"]
RANDOM_CASES = 300
LONG_WORDS = ("ground view of the great pyramids and sphinx on the moon surface with an astronaut in the "
              "foreground and the planet earth in a black sky").split()


def corpus_texts() -> list[str]:
    rng = random.Random(20250737)
    texts = list(EDGE_CASES)
    texts += ["pre " + t for t in EDGE_CASES[:60]]  # the release's prefix in front of edge cases
    texts += ["".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 16))) for _ in range(RANDOM_CASES)]
    # long prompts: just below, at and well beyond the release's 256 ids
    for words in (120, 300, 1200):
        texts.append("pre " + " ".join(rng.choice(LONG_WORDS) for _ in range(words)))
    texts.append("pre " + "  ".join(["a cat </s> <extra_id_3>"] * 80))
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    return unique


SLOW = r"""
import json, sys
import transformers
from transformers import T5Tokenizer
tok = T5Tokenizer.from_pretrained(sys.argv[1], legacy=True)  # as from_pretrained("google/t5-v1_1-xl") defaulted
texts = json.load(open(sys.argv[2], encoding="utf-8"))
json.dump({"version": transformers.__version__, "ids": [tok(t)["input_ids"] for t in texts]},
          open(sys.argv[3], "w", encoding="utf-8"))
"""


def slow_ids(tf4_python: str, tokenizer_json: Path, texts: list[str]) -> tuple[str, list[list[int]]]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proto, _ = _spm_proto_from_tokenizer_json(tokenizer_json)
        folder = tmp / "t5-v1_1"
        folder.mkdir()
        (folder / "spiece.model").write_bytes(proto)
        extra = [f"<extra_id_{i}>" for i in range(100)]
        settings = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 100,
                    "additional_special_tokens": extra}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # as google/t5-v1_1-* ship them
            (folder / name).write_text(json.dumps(settings))
        (tmp / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
        subprocess.run([tf4_python, "-c", SLOW, str(folder), str(tmp / "texts.json"), str(tmp / "ids.json")],
                       check=True, capture_output=True)
        result = json.loads((tmp / "ids.json").read_text(encoding="utf-8"))
    if not result["version"].startswith("4."):
        raise CorpusError(f"{tf4_python} has transformers {result['version']}; the reference is transformers 4.x")
    return result["version"], result["ids"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tf4-python", required=True, help="python of an environment with transformers 4.x")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="T5 tokenizer folder (default: ComfyUI's comfy/text_encoders/t5_tokenizer)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    folder = args.tokenizer or comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"
    tokenizer_json = folder / "tokenizer.json"
    texts = corpus_texts()
    try:
        version, ids = slow_ids(args.tf4_python, tokenizer_json, texts)
    except CorpusError as e:
        print(e, file=sys.stderr)
        return 2

    from tokenizers import Tokenizer

    rust = Tokenizer.from_file(str(tokenizer_json))
    plain = [i for i, t in enumerate(texts) if not any(s in t for s in SPECIAL_TEXT)]
    disagree = [i for i in plain if rust.encode(texts[i]).ids != ids[i]]
    for i in disagree[:10]:
        print(f"slow != tokenizers: {texts[i]!r}: {ids[i]} vs {rust.encode(texts[i]).ids}", file=sys.stderr)
    if disagree:
        print(f"{len(disagree)} of {len(plain)} plain strings disagree: the rebuilt sentencepiece model is not the "
              "tokenizer.json's; nothing written", file=sys.stderr)
        return 1
    corpus = {
        "about": "T5 token ids of each text as transformers' slow T5Tokenizer (4.x, legacy) gives them, </s> "
                 "included; regenerate with scripts/make_t5_tokenizer_corpus.py",
        "reference": f"transformers {version} T5Tokenizer(legacy=True)",
        "tokenizer": "comfy/text_encoders/t5_tokenizer/tokenizer.json (ComfyUI)",
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.read_bytes()).hexdigest(),
        "checked": f"{len(plain)} texts without special-token strings: the same ids from the tokenizers library",
        "cases": [[t, i] for t, i in zip(texts, ids)],
    }
    lines = ",\n".join(json.dumps(case, ensure_ascii=True, separators=(",", ":")) for case in corpus.pop("cases"))
    head = json.dumps(corpus, indent=1, ensure_ascii=True)[:-2]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f'{head},\n "cases": [\n{lines}\n ]\n}}\n', encoding="utf-8")
    print(f"wrote {args.out}: {len(texts)} texts, {sum(map(len, ids))} ids, {args.out.stat().st_size:,} bytes; "
          f"reference transformers {version}; {len(plain)} plain texts agree with the tokenizers library")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
