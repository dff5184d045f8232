"""Tokenizers for the LLM encoders, exact to what the release ran.

The release tokenized with ``T5Tokenizer.from_pretrained("google/t5-v1_1-xl")``: the *slow*
sentencepiece tokenizer of transformers 4.x, in its default legacy mode. For text that contains
no special-token strings that is ``sentencepiece.encode(text) + [</s>]``; special-token strings
(``</s>``, ``<pad>``, ``<unk>``, ``<extra_id_N>``) are cut out first and map to their ids, each
remaining piece is encoded on its own, and ``</s>`` is not added a second time after a text that
already ends with one. :class:`SentencePieceTokenizer` does exactly that with the sentencepiece
library itself, whatever transformers version is installed (5.x's T5 tokenizers are
``tokenizers``-based and differ from 4.x's slow one at those edges).

A folder with only a ``tokenizer.json`` (ComfyUI ships T5's vocabulary that way) is turned back
into the sentencepiece model it was converted from: same pieces, scores and normalisation table,
so sentencepiece's own normaliser and Viterbi search run on it.

Decoder-only LLMs use their own tokenizers through transformers (:class:`HFTokenizer`).
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from .errors import LLMLoadError
from .safe_files import first_line

SPM_NAMES = ("spiece.model", "tokenizer.model", "sentencepiece.model")
# Files a transformers tokenizer is built from (tokenizer_config.json holds settings, no vocabulary).
HF_TOKENIZER_FILES = ("tokenizer.json", *SPM_NAMES)
BPE_FILES = ("vocab.json", "merges.txt")
T5_EXTRA_IDS = 100
MAX_EXTRA_IDS = 1000


class SentencePieceTokenizer:
    """T5's tokenizer as transformers 4.x's slow ``T5Tokenizer`` applied it (see module doc)."""

    def __init__(self, model_proto: bytes, specials: dict[str, int], source: str):
        import sentencepiece as spm

        self.source = source
        try:
            self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as exc:  # RuntimeError from the C++ side for a corrupt model
            raise LLMLoadError(f"{source}: not a usable sentencepiece model ({first_line(exc)})") from None
        self.specials = dict(specials)
        self.eos_id = self.specials.get("</s>", self.processor.eos_id())
        self.pad_id = self.specials.get("<pad>", max(self.processor.pad_id(), 0))
        if self.eos_id < 0:
            raise LLMLoadError(f"{source}: the tokenizer has no end token </s>; T5 encoders need one")
        alternatives = sorted(self.specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None

    @property
    def vocab_size(self) -> int:
        """One more than the largest id this tokenizer can emit."""
        return max([self.processor.get_piece_size() - 1, *self.specials.values()]) + 1

    def tokenize(self, text: str) -> list[int]:
        """All ids of ``text``, ``</s>`` included, before any truncation or padding."""
        ids: list[int] = []
        for chunk in self._split.split(text) if self._split else [text]:
            if chunk in self.specials:
                ids.append(self.specials[chunk])
            elif chunk:
                ids.extend(self.processor.encode(chunk))
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids

    @classmethod
    def from_spm_file(cls, path: Path, extra_ids: int = T5_EXTRA_IDS) -> "SentencePieceTokenizer":
        """A sentencepiece model file (``spiece.model``), with T5's ``<extra_id_N>`` appended."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        data = Path(path).read_bytes()
        proto = pb.ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception as exc:
            raise LLMLoadError(f"{path}: not a sentencepiece model file ({first_line(exc)})") from None
        if not proto.pieces:
            raise LLMLoadError(f"{path}: not a sentencepiece model file (it holds no pieces)")
        # The slow tokenizer's special tokens: pad, eos, unk (by name, as T5Tokenizer declares
        # them) and the sentinels it appends after the sentencepiece vocabulary.
        specials = {p.piece: i for i, p in enumerate(proto.pieces) if p.piece in ("<pad>", "</s>", "<unk>")
                    and p.type in (pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.UNKNOWN)}
        size = len(proto.pieces)
        specials.update({f"<extra_id_{i}>": size + extra_ids - 1 - i for i in range(extra_ids)})
        return cls(data, specials, str(path))

    @classmethod
    def from_tokenizer_json(cls, path: Path) -> "SentencePieceTokenizer":
        """A ``tokenizer.json`` converted from a sentencepiece Unigram model, turned back into it."""
        proto, specials = _spm_proto_from_tokenizer_json(Path(path))
        return cls(proto, specials, str(path))


def _spm_proto_from_tokenizer_json(path: Path) -> tuple[bytes, dict[str, int]]:
    try:
        return _convert_tokenizer_json(path)
    except LLMLoadError:
        raise
    except Exception as exc:  # a field of the wrong type or shape anywhere in the file
        raise LLMLoadError(f"{path}: malformed tokenizer.json ({type(exc).__name__}: {first_line(exc)})") from None


def _convert_tokenizer_json(path: Path) -> tuple[bytes, dict[str, int]]:
    from sentencepiece import sentencepiece_model_pb2 as pb

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        kind = model.get("type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError,
            AttributeError) as exc:
        raise LLMLoadError(f"{path}: unreadable tokenizer.json ({first_line(exc)})") from None
    if kind != "Unigram":
        raise LLMLoadError(
            f"{path}: a {kind} tokenizer, but T5 encoders use a sentencepiece Unigram vocabulary "
            "(spiece.model, or a tokenizer.json converted from one); point tokenizer_path at T5's tokenizer"
        )
    vocab = model["vocab"]
    added_tokens = data.get("added_tokens") or []
    if not isinstance(added_tokens, list) or not all(
            isinstance(t, dict) and type(t.get("id")) is int and isinstance(t.get("content"), str) for t in added_tokens):
        raise LLMLoadError(f"{path}: malformed tokenizer.json (added_tokens must be a list of {{id, content}} entries)")
    added = {t["id"]: t for t in added_tokens}
    # Tokens appended after the sentencepiece vocabulary (T5's <extra_id_N>) are added tokens;
    # the sentencepiece model is everything before that tail.
    size = len(vocab)
    while size > 0 and size - 1 in added:
        size -= 1
    unk_id = model.get("unk_id")
    proto = pb.ModelProto()
    for i, (piece, score) in enumerate(vocab[:size]):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, score
        if i == unk_id:
            entry.type = pb.ModelProto.SentencePiece.UNKNOWN
        elif i in added:
            special = added[i].get("special", True)
            entry.type = pb.ModelProto.SentencePiece.CONTROL if special else pb.ModelProto.SentencePiece.USER_DEFINED
    if unk_id is None or not 0 <= unk_id < size:
        raise LLMLoadError(f"{path}: the Unigram vocabulary declares no unknown token")
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = size
    proto.trainer_spec.unk_id = unk_id
    proto.trainer_spec.byte_fallback = bool(model.get("byte_fallback"))
    for name, field in (("<pad>", "pad_id"), ("</s>", "eos_id"), ("<s>", "bos_id")):
        ids = [i for i in range(size) if vocab[i][0] == name]
        setattr(proto.trainer_spec, field, ids[0] if ids else -1)
    charsmap = _find(data.get("normalizer"), "Precompiled")
    spec = proto.normalizer_spec
    spec.name = "nmt_nfkc" if charsmap else "identity"
    if charsmap:
        spec.precompiled_charsmap = base64.b64decode(charsmap["precompiled_charsmap"])
    metaspace = _find(data.get("pre_tokenizer"), "Metaspace") or {}
    spec.add_dummy_prefix = metaspace.get("prepend_scheme", "always") != "never" and metaspace.get("add_prefix_space", True)
    # sentencepiece's default, and T5's: the converted file expresses it as Strip + Replace(" {2,}")
    # or WhitespaceSplit, which are not a faithful record of the flag, so it is not read from them.
    spec.remove_extra_whitespaces = True
    spec.escape_whitespaces = True
    specials = {t["content"]: i for i, t in added.items() if t.get("special", True)}
    return proto.SerializeToString(), specials


def _find(component, kind: str):
    """The first ``{"type": kind}`` entry in a tokenizer.json normalizer / pre-tokenizer tree."""
    if isinstance(component, dict):
        if component.get("type") == kind:
            return component
        for key in ("normalizers", "pretokenizers"):
            for child in component.get(key) or []:
                found = _find(child, kind)
                if found:
                    return found
    return None


def find_t5_tokenizer_file(folder: Path) -> Path | None:
    """The T5 tokenizer in a folder: the sentencepiece model if there, else a tokenizer.json."""
    for name in (*SPM_NAMES, "tokenizer.json"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_t5_tokenizer(path: Path) -> SentencePieceTokenizer:
    """A T5 tokenizer from a folder or a file (sentencepiece model or tokenizer.json)."""
    path = Path(path)
    if path.is_dir():
        found = find_t5_tokenizer_file(path)
        if found is None:
            raise LLMLoadError(
                f"{path}: no T5 tokenizer here (looked for {', '.join(SPM_NAMES)} and tokenizer.json)"
            )
        path = found
    elif not path.is_file():
        raise LLMLoadError(f"{path}: tokenizer not found (no such file or folder)")
    if path.suffix == ".json":
        return SentencePieceTokenizer.from_tokenizer_json(path)
    return SentencePieceTokenizer.from_spm_file(path, extra_ids=_extra_ids(path.parent))


def _extra_ids(folder: Path) -> int:
    """How many ``<extra_id_N>`` sentinels follow the vocabulary (T5: 100), from tokenizer_config.json.
    Bounded: each is a token the tokenizer holds in memory and matches in every prompt."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return T5_EXTRA_IDS
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LLMLoadError(f"{config}: unreadable JSON ({first_line(exc)})") from None
    value = data.get("extra_ids", T5_EXTRA_IDS) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXTRA_IDS:
        raise LLMLoadError(f"{config}: extra_ids must be a whole number from 0 to {MAX_EXTRA_IDS} (T5 has 100), "
                           f"got {str(value)[:40]!r}")
    return value


def has_hf_tokenizer(folder: Path) -> bool:
    """A tokenizer transformers can build from the folder's files: tokenizer.json, a sentencepiece
    model, or a BPE vocab.json with its merges.txt. A tokenizer_config.json alone is not one."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in HF_TOKENIZER_FILES) or all(
        (folder / name).is_file() for name in BPE_FILES)


class HFTokenizer:
    """A decoder-only LLM's own tokenizer (transformers, local files only), plain or chat-templated."""

    def __init__(self, path: Path, template: str = "plain"):
        from transformers import AutoTokenizer

        self.source = str(path)
        try:
            self.inner = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # OSError, ValueError, ImportError for a missing backend, ...
            raise LLMLoadError(f"{path}: cannot load the tokenizer ({first_line(exc)})") from None
        self.check_template(template)
        self.template = template
        pad = self.inner.pad_token_id
        self.pad_id = pad if pad is not None else (self.inner.eos_token_id or 0)

    @property
    def vocab_size(self) -> int:
        return len(self.inner)

    def check_template(self, template: str) -> None:
        """Raise unless this tokenizer can wrap prompts with ``template`` ("plain" or "chat")."""
        if template not in ("plain", "chat"):
            raise LLMLoadError(f"template must be 'plain' or 'chat', got {template!r}")
        if template == "chat" and not getattr(self.inner, "chat_template", None):
            raise LLMLoadError(f"{self.source}: template 'chat' asked for, but this tokenizer has no chat template; "
                               "use 'plain'")

    def tokenize(self, text: str, template: str | None = None) -> list[int]:
        """Ids of ``text``, wrapped in ``template`` (default: the one this tokenizer was loaded with)."""
        if (template or self.template) == "chat":
            try:
                text = self.inner.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=False)
            except Exception as exc:  # the template is the model folder's (sandboxed jinja): its errors
                raise LLMLoadError(f"{self.source}: the chat template failed ({type(exc).__name__}: "
                                   f"{first_line(exc)}); use template 'plain'") from None
            return list(self.inner(text, add_special_tokens=False)["input_ids"])
        return list(self.inner(text, add_special_tokens=True)["input_ids"])
