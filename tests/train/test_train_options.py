"""The trainer's options on tiny models: precision choice, the loss options, the feature cache,
WebDataset shards, bad data, and errors that say what to change."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llm4gen_core.errors import LLM4GENError
from llm4gen_core.train import entity, precision
from llm4gen_core.train.cli import main
from synthetic.train_images import add_lines, bad_files, shard_sample, write_folder, write_shard

from scripts.tiny_training import train_args

pytestmark = pytest.mark.slow


def records(output):
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


# ---- precision: never a slow dtype by accident -------------------------------------------------

@pytest.mark.parametrize("cpu_bf16, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_follows_the_cpus_bf16(cpu_bf16, expected):
    assert precision.choose("auto", on_gpu=False, cpu_bf16=cpu_bf16)[0] == expected


def test_slow_precisions_on_a_cpu_are_refused():
    with pytest.raises(LLM4GENError, match="no native bf16"):
        precision.choose("bf16", on_gpu=False, cpu_bf16=False)
    with pytest.raises(LLM4GENError, match="needs a GPU"):
        precision.choose("fp16", on_gpu=False, cpu_bf16=True)
    assert precision.choose("bf16", on_gpu=False, cpu_bf16=True)[0] == "bf16"
    assert precision.choose("auto", on_gpu=True, gpu_bf16=True)[0] == "bf16"
    assert precision.choose("auto", on_gpu=True, gpu_bf16=False)[0] == "fp16"


def test_the_probe_answers_for_this_cpu():
    assert isinstance(precision.cpu_has_native_bf16(), bool)


# ---- loss options and LoRA export ---------------------------------------------------------------

def test_lora_with_v_prediction_min_snr_ema_and_entity_loss(tiny, tmp_path):
    out = tmp_path / "lora"
    assert main(train_args(tiny, out, "--prediction-type", "v_prediction", "--snr-gamma", "5", "--ema",
                           "--ema-decay", "0.5", "--entity-loss-weight", "0.1", "--caption-dropout", "0",
                           "--lora-rank", "4", "--lora-alpha", "2", "--lr-warmup-steps", "1",
                           "--lr-scheduler", "constant_with_warmup", "--checkpoint-every", "3",
                           steps=3, mode="cam+lora")) == 0
    log = records(out)
    assert all(r["entity_loss"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[0]["lr"] == pytest.approx(1e-4)  # after 1 warm-up step the full lr
    lora = load_file(str(out / "lora.safetensors"))
    downs = [k for k in lora if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") for k in lora)
    for key in downs:
        stem = key[: -len(".lora_down.weight")]
        assert lora[key].shape[0] == 4 and lora[stem + ".lora_up.weight"].shape[1] == 4
        assert lora[stem + ".alpha"].item() == 2.0
    # the exported adapter is the moving average, not the last weights
    ema = load_file(str(out / "checkpoint-3" / "ema.safetensors"))
    last = load_file(str(out / "checkpoint-3" / "trainable.safetensors"))
    adapter = load_file(str(out / "adapter.safetensors"))
    key = "CrossFusionModule.0.llm_proj.weight"
    assert torch.equal(adapter[key], ema["cam." + key]) and not torch.equal(adapter[key], last["cam." + key])


def test_gradient_checkpointing_gives_the_same_losses(tiny, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "ckpt"
    assert main(train_args(tiny, plain, steps=2, mode="cam+unet")) == 0
    assert main(train_args(tiny, checkpointed, "--gradient-checkpointing", steps=2, mode="cam+unet")) == 0
    for a, b in zip(records(plain), records(checkpointed)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_entity_maps_and_word_positions(tiny):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny.base / "tokenizer")
    assert entity.word_positions(tokenizer, "a red apple on a table", "apple", 77) == [3]
    positions, groups = entity.pair_layout(tokenizer, ["a red apple", "no pair here"], [[("red", "apple")], []], 77)
    assert positions.tolist() == [[2, 3], [-1, -1]] and groups == [[([0], [1])], []]
    same = torch.rand(2, 16, 2)
    same[..., 1] = same[..., 0]
    assert entity.symmetric_kl([same], groups).item() == pytest.approx(0.0, abs=1e-6)
    apart = torch.zeros(2, 16, 2)
    apart[:, :8, 0], apart[:, 8:, 1] = 1.0, 1.0
    assert entity.symmetric_kl([apart], groups).item() > 5.0


# ---- the feature cache --------------------------------------------------------------------------

def test_cache_is_filled_once_and_reused(tiny, tmp_path):
    cache = tmp_path / "cache"
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(train_args(tiny, first, "--cache-dir", str(cache), steps=8, mode="cam")) == 0  # one epoch
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) == 16
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert main(train_args(tiny, second, "--cache-dir", str(cache), steps=8, mode="cam")) == 0
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.rglob("*.safetensors"))} == stamps  # nothing re-encoded
    assert [r["loss"] for r in records(first)] == [r["loss"] for r in records(second)]
    with safe_open(str(files[0]), framework="pt") as f:
        assert f.get_tensor("llm").dtype == torch.float16 and f.get_tensor("clip").shape == (77, 32)


def test_cache_refuses_augmentation(tiny, tmp_path):
    assert main(train_args(tiny, tmp_path / "o", "--cache-dir", str(tmp_path / "c"), "--random-flip", steps=1)) == 2


# ---- data: shards and bad samples ---------------------------------------------------------------

def test_trains_on_webdataset_shards(tiny, tmp_path):
    for shard in range(2):
        write_shard(tmp_path / f"data-{shard:03d}.tar", [shard_sample(n, "json") for n in range(8 * shard, 8 * shard + 8)])
    args = train_args(tiny, tmp_path / "out", "--log-samples", steps=2)
    args[args.index("--data") + 1] = str(tmp_path / "data-{000..001}.tar")
    assert main(args) == 0
    assert all(len(r["sample_keys"][0]) == 2 for r in records(tmp_path / "out"))


def test_bad_samples_are_skipped_and_summarised(tiny, tmp_path, caplog):
    data = write_folder(tmp_path / "data")
    broken = bad_files()
    for name, (content, _) in broken.items():
        (data / name).write_bytes(content)
    add_lines(data, list(broken))
    (data / "metadata.jsonl").open("a").write("{not json\n")
    args = train_args(tiny, tmp_path / "out", steps=12)
    args[args.index("--data") + 1] = str(data)
    with caplog.at_level("INFO", logger="llm4gen.train"):
        assert main(args) == 0
    summary = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreadable image" in summary and "too small" in summary and "skipped" in summary
    state = json.loads((tmp_path / "out" / "checkpoint-12" / "trainer_state.json").read_text())
    assert set(broken) <= set(state["skipped"]["bad"])


def test_mostly_bad_data_stops_the_run_with_a_clear_error(tiny, tmp_path, capsys):
    data = write_folder(tmp_path / "data", count=3)
    names = []
    for i in range(12):
        (data / f"bad{i}.png").write_bytes(b"not an image" * 20)
        names.append(f"bad{i}.png")
    add_lines(data, names)
    args = train_args(tiny, tmp_path / "out", steps=20)
    args[args.index("--data") + 1] = str(data)
    assert main(args) == 2
    assert "most of the data is bad" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--base", "/nonexistent/base"], "--base /nonexistent/base: no such file"),
    (["--mixed-precision", "fp16"], "needs a GPU"),
    (["--resolution", "30"], "multiple of 8"),
    (["--entity-loss-weight", "1", "--gradient-checkpointing"], "one or the other"),
])
def test_bad_settings_are_one_clear_line(tiny, tmp_path, capsys, flags, message):
    assert main(train_args(tiny, tmp_path / "out", *flags, steps=1)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_adam8bit_trains_and_resumes(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")  # installed by the test set-up (tests/requirements.txt)
    out = tmp_path / "adam8bit"
    args = train_args(tiny, out, "--optimizer", "adam8bit", "--checkpoint-every", "2", steps=2, mode="cam+lora")
    assert main(args) == 0
    assert main(args[: args.index("--max-steps") + 1] + ["3"] + args[args.index("--max-steps") + 2:]
                + ["--resume", "latest"]) == 0
    assert [r["step"] for r in records(out)] == [1, 2, 3]


def test_adam8bit_without_bitsandbytes_says_what_to_install(tiny, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    assert main(train_args(tiny, tmp_path / "o", "--optimizer", "adam8bit", steps=1)) == 2
    assert "pip install bitsandbytes" in capsys.readouterr().err


def test_spacy_pairs_without_spacy_say_what_to_install(tiny, tmp_path, monkeypatch, capsys):
    """Without spaCy: one line saying what to install (with spaCy, the tests below train a pipeline)."""
    import sys

    monkeypatch.setitem(sys.modules, "spacy", None)
    assert main(train_args(tiny, tmp_path / "o", "--entity-loss-weight", "0.1", "--entity-pairs", "spacy",
                           steps=1)) == 2
    assert "python -m spacy download en_core_web_sm" in capsys.readouterr().err


@pytest.fixture(scope="module")
def spacy_pipeline(tmp_path_factory):
    pytest.importorskip("spacy")  # installed by the test set-up (tests/requirements.txt)
    from synthetic.spacy_pipeline import train_pipeline

    return train_pipeline(tmp_path_factory.mktemp("spacy") / "tiny_en")


def test_spacy_pairs_are_adjectival_modifiers_of_nouns(spacy_pipeline):
    from synthetic.spacy_pipeline import EXPECTED_PAIRS

    find_pairs = entity.SpacyPairs(str(spacy_pipeline))
    assert {caption: find_pairs(caption) for caption in EXPECTED_PAIRS} == EXPECTED_PAIRS


def test_entity_loss_with_spacy_pairs_trains(tiny, tmp_path, spacy_pipeline):
    """Captions without 'pairs' in the data: the pairs come from the spaCy pipeline, so the entity
    loss is above zero exactly for the steps whose caption has an adjective-noun pair (0 without)."""
    import json

    from synthetic.spacy_pipeline import EXPECTED_PAIRS

    data = tmp_path / "data"
    data.mkdir()
    captions = list(EXPECTED_PAIRS)
    lines = []
    for number, line in enumerate((tiny.data / "metadata.jsonl").read_text().splitlines()[:4]):
        entry = json.loads(line)
        (data / entry["file_name"]).write_bytes((tiny.data / entry["file_name"]).read_bytes())
        lines.append(json.dumps({"file_name": entry["file_name"], "text": captions[number]}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = train_args(tiny, out, "--entity-loss-weight", "0.1", "--entity-pairs", "spacy", "--spacy-model",
                      str(spacy_pipeline), "--caption-dropout", "0", "--log-samples", steps=4)
    args[args.index("--data") + 1] = str(data)
    args[args.index("--batch-size") + 1] = "1"
    assert main(args) == 0
    log = records(out)
    assert len(log) == 4
    caption_of = {json.loads(line)["file_name"]: json.loads(line)["text"] for line in lines}
    seen = set()
    for record in log:
        ((key,),) = record["sample_keys"]
        caption = caption_of[key]
        seen.add(caption)
        assert (record["entity_loss"] > 0) == bool(EXPECTED_PAIRS[caption]), (caption, record)
    assert len(seen) == 4, "one epoch of 4 samples at batch size 1 shows every caption once"


def test_spacy_pipeline_missing_is_one_clear_line(tiny, tmp_path, capsys):
    pytest.importorskip("spacy")
    assert main(train_args(tiny, tmp_path / "o", "--entity-loss-weight", "0.1", "--entity-pairs", "spacy",
                           "--spacy-model", str(tmp_path / "no_such_pipeline"), steps=1)) == 2
    err = capsys.readouterr().err
    assert "no spaCy pipeline" in err and "--spacy-model" in err and "Traceback" not in err
