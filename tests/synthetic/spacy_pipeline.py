"""A tiny English spaCy pipeline trained here, for ``--entity-pairs spacy``.

spaCy's released English pipelines (``en_core_web_sm`` ...) are downloaded from GitHub, not from
the package index, so tests cannot have one. Instead a blank English pipeline with a
morphologizer (part-of-speech tags) and a dependency parser is trained for a few seconds on the
captions below, hand-annotated in Universal Dependencies style, until it parses them as annotated,
and saved with ``nlp.to_disk``. The trainer then loads it as it would load an installed pipeline.
"""
from __future__ import annotations

import random
from pathlib import Path

# caption -> (word, UPOS, head index, dependency) per token
CAPTIONS: dict[str, list[tuple[str, str, int, str]]] = {
    "a red apple on a wooden table": [
        ("a", "DET", 2, "det"), ("red", "ADJ", 2, "amod"), ("apple", "NOUN", 2, "ROOT"), ("on", "ADP", 2, "prep"),
        ("a", "DET", 6, "det"), ("wooden", "ADJ", 6, "amod"), ("table", "NOUN", 3, "pobj")],
    "a blue car and a green tree": [
        ("a", "DET", 2, "det"), ("blue", "ADJ", 2, "amod"), ("car", "NOUN", 2, "ROOT"), ("and", "CCONJ", 2, "cc"),
        ("a", "DET", 6, "det"), ("green", "ADJ", 6, "amod"), ("tree", "NOUN", 2, "conj")],
    "a small dog sleeps": [
        ("a", "DET", 2, "det"), ("small", "ADJ", 2, "amod"), ("dog", "NOUN", 3, "nsubj"),
        ("sleeps", "VERB", 3, "ROOT")],
    "the cat is black": [
        ("the", "DET", 1, "det"), ("cat", "NOUN", 2, "nsubj"), ("is", "AUX", 2, "ROOT"), ("black", "ADJ", 2, "acomp")],
}
# What the trainer must take from each caption: adjectival modifiers of nouns only ("black" in
# "the cat is black" is a predicate, not a modifier).
EXPECTED_PAIRS = {
    "a red apple on a wooden table": [("red", "apple"), ("wooden", "table")],
    "a blue car and a green tree": [("blue", "car"), ("green", "tree")],
    "a small dog sleeps": [("small", "dog")],
    "the cat is black": [],
}


def train_pipeline(folder: Path, iterations: int = 30, seed: int = 0) -> Path:
    """Train the pipeline on CAPTIONS and save it to ``folder``; raises if it does not learn them."""
    import spacy
    from spacy.training import Example

    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    nlp.add_pipe("morphologizer")
    nlp.add_pipe("parser", config={"min_action_freq": 1})  # keep every label of this tiny set
    examples = []
    for caption, tokens in CAPTIONS.items():
        doc = nlp.make_doc(caption)
        assert [t.text for t in doc] == [w for w, *_ in tokens], caption
        examples.append(Example.from_dict(doc, {"pos": [p for _, p, _, _ in tokens],
                                                "heads": [h for _, _, h, _ in tokens],
                                                "deps": [d for *_, d in tokens]}))
    optimizer = nlp.initialize(lambda: examples)
    order = random.Random(seed)
    for _ in range(iterations):
        order.shuffle(examples)
        nlp.update(examples, sgd=optimizer, losses={})
    for caption, tokens in CAPTIONS.items():
        parsed = [(t.text, t.pos_, t.head.i, t.dep_) for t in nlp(caption)]
        if parsed != tokens:
            raise AssertionError(f"the tiny spaCy pipeline did not learn {caption!r}: {parsed}")
    nlp.to_disk(folder)
    return folder
