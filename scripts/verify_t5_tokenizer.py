"""Check llm4gen_core's T5 tokenization against the release's own tokenizer code, on thousands of strings.

CI checks the same on a committed corpus (tests/unit/test_t5_tokenizer_corpus.py, made by
scripts/make_t5_tokenizer_corpus.py); this script is the wider, manual check.

The release tokenized with transformers 4.x's *slow* ``T5Tokenizer`` (sentencepiece, legacy mode).
transformers 5 no longer has it, so this script makes a side venv with ``transformers==4.44.2``
(tokenizers only, no torch; from PyPI, cached under the project cache dir), and compares, on
edge cases and a few thousand random strings (whitespace runs, newlines, unicode, emoji, special
token strings), the ids of:

  slow-4.44   transformers 4.44 T5Tokenizer on a spiece.model rebuilt from the tokenizer.json
  ours        llm4gen_core.tokenization.load_t5_tokenizer(<folder with tokenizer.json>)
  rust        the ``tokenizers`` library on that tokenizer.json (HF's fast path)

    .venv/bin/python -m scripts.verify_t5_tokenizer [TOKENIZER_FOLDER]   # default: ComfyUI's t5_tokenizer

What it cannot show: that the rebuilt spiece.model equals google/t5-v1_1-xl's file byte for byte
(no copy of that file is available offline); the pieces, scores and normalisation table are the
tokenizer.json's, which transformers converted from it.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from llm4gen_core.tokenization import _spm_proto_from_tokenizer_json, load_t5_tokenizer

from .comfyui_host import cache_dir, comfyui_root

TF4 = "transformers==4.44.2"
ATOMS = ["a", "cat", "The", " ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "é", "e\u0301", "ß", "日本", "😀",
         "🐱\u200d👤", "ﬁ", "①", "Ａ", ".", ",", "'", "-", "</s>", "<pad>", "<unk>", "<extra_id_0>",
         "<extra_id_42>", "<s>", "▁", "_", "0", "42", "\u200b", "\x07", "<", ">", "/"]
EDGES = ["", " ", "   ", "\n", "trailing  ", "  leading", "a  \n  b", "naïve café", "emoji 😀",
         "\nGround view of the Great Pyramids and Sphinx on the moon's surface.\n", "ends with </s>"]

SLOW = r"""
import json, sys
from transformers import T5Tokenizer
tok = T5Tokenizer.from_pretrained(sys.argv[1])  # legacy default, as from_pretrained("google/t5-v1_1-xl")
texts = json.load(open(sys.argv[2]))
json.dump([tok(t)["input_ids"] for t in texts], open(sys.argv[3], "w"))
"""


def side_python() -> Path:
    env = cache_dir() / "tf4-tokenizer-venv"
    python = env / "bin" / "python"
    if not python.exists():
        venv.create(env, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TF4, "sentencepiece", "protobuf"], check=True)
    return python


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"
    rng = random.Random(1234)
    fuzz = ["".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    texts = [p + t for t in EDGES + fuzz for p in ("pre ", "")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proto, _ = _spm_proto_from_tokenizer_json(folder / "tokenizer.json")
        (tmp / "spm").mkdir()
        (tmp / "spm" / "spiece.model").write_bytes(proto)
        extra = [f"<extra_id_{i}>" for i in range(100)]
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # as google/t5-v1_1-* ship them
            (tmp / "spm" / name).write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                                                        "extra_ids": 100, "additional_special_tokens": extra}))
        (tmp / "texts.json").write_text(json.dumps(texts))
        subprocess.run([str(side_python()), "-c", SLOW, str(tmp / "spm"), str(tmp / "texts.json"), str(tmp / "slow.json")],
                       check=True, capture_output=True)
        slow = json.loads((tmp / "slow.json").read_text())
    from tokenizers import Tokenizer

    ours = load_t5_tokenizer(folder)
    rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain = [i for i, t in enumerate(texts) if not any(s in t for s in ("</s>", "<pad>", "<unk>", "<extra_id_"))]
    bad_ours = [i for i, t in enumerate(texts) if ours.tokenize(t) != slow[i]]
    bad_rust = [i for i in plain if rust.encode(texts[i]).ids != slow[i]]
    print(f"tokenizer: {folder / 'tokenizer.json'}; reference: {TF4} slow T5Tokenizer (legacy)")
    print(f"ours == slow-4.44: {len(texts) - len(bad_ours)}/{len(texts)} strings")
    print(f"rust == slow-4.44: {len(plain) - len(bad_rust)}/{len(plain)} strings without special-token text")
    for i in bad_ours[:10]:
        print(f"  differs: {texts[i]!r}: ours {ours.tokenize(texts[i])} slow {slow[i]}")
    return 1 if bad_ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
