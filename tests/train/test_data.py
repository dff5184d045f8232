"""The training data layer: folders and shards to endless, deterministic, resumable full batches.

Images are drawn with PIL into tmp_path (tests/train/conftest.py); nothing is downloaded.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile

import pytest
import torch
from PIL import Image, ImageFile

from synthetic.train_images import (RESOLUTION, add_lines, bad_files, encode, noise_image, png_declaring, shard_sample,
                      write_folder, write_shard)
from llm4gen_core.errors import DataError
from llm4gen_core.train import folder as folder_module
from llm4gen_core.train import shards as shards_module
from llm4gen_core.train.data import Batch, SkipTally, batches, open_dataset
from llm4gen_core.train.images import DecodedImage, ImageProblem, ImageRules, decode_image
from llm4gen_core.train.samples import sample_rng


def take(dataset, count: int, batch_size: int = 4, **options) -> list[Batch]:
    return list(itertools.islice(batches(dataset, batch_size, **options), count))


def assert_same(first: list[Batch], second: list[Batch]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys == b.keys
        assert a.texts == b.texts and a.pairs == b.pairs and a.epoch == b.epoch and a.skipped == b.skipped
        assert torch.equal(a.pixel_values, b.pixel_values)


def with_bad_files(root, names=None):
    files = bad_files()
    for name in names or files:
        (root / name).write_bytes(files[name][0])
    add_lines(root, list(names or files))
    return files


# -- a folder of good images -------------------------------------------------------------------

def test_folder_gives_full_batches_of_normalised_pixels_and_captions(folder):
    dataset = open_dataset(folder, RESOLUTION)
    assert len(dataset) == 16 and dataset.index_skips == []
    got = take(dataset, 4)                      # one epoch: 16 samples in 4 batches of 4
    for batch in got:
        assert batch.pixel_values.shape == (4, 3, RESOLUTION, RESOLUTION)
        assert batch.pixel_values.dtype == torch.float32
        assert batch.pixel_values.min() >= -1 and batch.pixel_values.max() <= 1
        assert batch.skipped == [] and batch.epoch == 0
    keys = [key for batch in got for key in batch.keys]
    assert sorted(keys) == sorted(record.file_name for record in dataset.records)
    by_key = {k: (t, p) for batch in got for k, t, p in zip(batch.keys, batch.texts, batch.pairs)}
    assert by_key["img03.png"] == ("caption 3", [("red", "thing3")])
    assert by_key["img02.png"] == ("caption 2", [])
    assert take(dataset, 5)[4].epoch == 1


def test_caption_is_a_synonym_of_text(tmp_path):
    root = write_folder(tmp_path / "data", count=2)
    (root / "extra.png").write_bytes(encode(noise_image(7, (40, 40))))
    with open(root / "metadata.jsonl", "a") as metadata:
        metadata.write(json.dumps({"file_name": "extra.png", "caption": "from caption"}) + "\n")
    dataset = open_dataset(root, RESOLUTION)
    assert [r.text for r in dataset.records if r.file_name == "extra.png"] == ["from caption"]


# -- image conversion ---------------------------------------------------------------------------

RULES = ImageRules(RESOLUTION, RESOLUTION // 2)


def decode(image: Image.Image, fmt: str = "PNG", **options) -> torch.Tensor:
    decoded = decode_image(encode(image, fmt, **options), RULES, sample_rng(0, 0, "x"))
    assert isinstance(decoded, DecodedImage), decoded
    return decoded.pixels


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_original_size_and_crop_corner_are_reported(fmt):
    """SDXL conditions on them: the stored size (before JPEG's reduced-scale decoding) and where the
    crop starts in the resized image."""
    wide = noise_image(3, (128, 64))
    decoded = decode_image(encode(wide, fmt), RULES, sample_rng(0, 0, "x"))
    assert decoded.original_size == (64, 128)
    assert decoded.crop_top_left == (0, (RESOLUTION * 2 - RESOLUTION) // 2)
    cropped = decode_image(encode(wide, fmt), ImageRules(RESOLUTION, RESOLUTION // 2, center_crop=False),
                           sample_rng(0, 0, "y"))
    top, left = cropped.crop_top_left
    assert top == 0 and 0 <= left <= RESOLUTION


def test_transparent_pixels_become_white_and_modes_become_rgb():
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert torch.all(decode(clear) == 1.0)
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0] * 256)
    assert torch.all(decode(palette, transparency=0) == 1.0)
    grey = decode(Image.new("L", (40, 40), 51))
    assert grey.shape == (3, RESOLUTION, RESOLUTION) and torch.allclose(grey, torch.full_like(grey, 51 / 127.5 - 1))


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    image = Image.new("I;16", (40, 40))
    image.frombytes(int(40000).to_bytes(2, "little") * 1600)
    assert image.getpixel((0, 0)) == 40000
    pixels = decode(image)
    assert torch.allclose(pixels, torch.full_like(pixels, 155 / 127.5 - 1))   # 40000 / 257 = 155, not 255


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))           # left red, right blue as stored
    exif = image.getexif()
    exif[0x0112] = 3                                    # orientation: rotate 180 to display
    pixels = decode(image, "PNG", exif=exif)
    left, right = pixels[:, 16, 4], pixels[:, 16, 28]
    assert left[2] > 0.9 and left[0] < -0.9             # displayed: left blue
    assert right[0] > 0.9 and right[2] < -0.9           # right red


def test_huge_declared_size_is_refused_without_decoding(monkeypatch):
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    for width, height in ((9000, 9000), (100_000, 100_000)):
        result = decode_image(png_declaring(width, height), RULES, sample_rng(0, 0, "x"))
        assert isinstance(result, ImageProblem) and result.reason == "too large", result
    assert decoded == []                                 # no pixel buffer was ever asked for
    decode(noise_image(1, (40, 40)))
    assert decoded and set(decoded) == {(40, 40)}        # the spy does see a real decode


# -- bad samples -------------------------------------------------------------------------------

def test_every_bad_file_is_skipped_with_its_reason_and_batches_stay_full(folder):
    files = with_bad_files(folder)
    (folder / "gone.png").write_bytes(encode(noise_image(3, (40, 40))))
    add_lines(folder, ["gone.png"])
    dataset = open_dataset(folder, RESOLUTION)
    (folder / "gone.png").unlink()                       # missing at load time, not at indexing
    tally = SkipTally()
    for batch in take(dataset, 12):                      # more than one epoch of 24
        assert len(batch.keys) == 4 and batch.pixel_values.shape[0] == 4
        assert not set(batch.keys) & (set(files) | {"gone.png"})
        tally.add(batch)
    expected = {name: reason for name, (_, reason) in files.items()} | {"gone.png": "missing file"}
    assert tally.bad == expected
    assert tally.seen == 12 * 4                          # 2 epochs of 24 places; bad files of epoch 2 count once
    assert "skipped 8 of 48 samples: 3 unreadable image, 2 too large" in tally.summary()


def test_metadata_problems_are_listed_and_left_out(folder, tmp_path):
    (tmp_path / "outside.png").write_bytes(encode(noise_image(4, (40, 40))))
    lines = ["{not json", "", "[1, 2]", json.dumps({"text": "no file"}), json.dumps({"file_name": "img00.png"}),
             json.dumps({"file_name": "../outside.png", "text": "escape"}),
             json.dumps({"file_name": str(tmp_path / "outside.png"), "text": "absolute"}),
             json.dumps({"file_name": "..\\outside.png", "text": "windows escape"}),
             json.dumps({"file_name": "img00.png", "text": "t", "pairs": [["only one"]]}),
             json.dumps({"file_name": "nowhere.png", "text": "missing"})]
    with open(folder / "metadata.jsonl", "a") as metadata:
        metadata.write("\n".join(lines) + "\n")
    dataset = open_dataset(folder, RESOLUTION)
    assert len(dataset) == 16
    assert [reason for _, reason in dataset.index_skips] == [
        "malformed metadata line", "empty metadata line", "malformed metadata line", "missing file_name or text",
        "missing file_name or text", "path outside the folder", "path outside the folder", "path outside the folder",
        "bad pairs", "missing file"]
    assert dataset.index_skips[0][0] == "metadata.jsonl:17" and dataset.index_skips[-1][0] == "nowhere.png"
    assert all("outside" not in record.file_name for record in dataset.records)


def test_mostly_bad_data_stops_the_run(tmp_path):
    root = write_folder(tmp_path / "data", count=3)
    with_bad_files(root)                                  # 7 bad of 10
    tally = SkipTally()
    with pytest.raises(DataError, match="most of the data is bad"):
        for batch in take(open_dataset(root, RESOLUTION), 3):
            tally.add(batch)
            tally.check()


def test_skip_tally_counts_keys_once_and_merges_across_ranks():
    tally = SkipTally()
    tally.add(Batch(torch.zeros(2, 3, 8, 8), ["x", "y"], [[], []], ["g.png", "g.png"],
                    skipped=[("a.png", "too small"), ("b.png", "unreadable image")]))
    tally.add(Batch(torch.zeros(2, 3, 8, 8), ["x", "y"], [[], []], ["g.png", "h.png"],
                    skipped=[("a.png", "too small")]))           # met again in a later epoch
    assert tally.seen == 4 and len(tally.bad) == 2
    tally.check()                                                 # half bad, not more than half
    tally.add_skipped([("metadata.jsonl:3", "malformed metadata line")])
    tally.add_skipped([("metadata.jsonl:3", "malformed metadata line")])   # the same line, reported twice
    assert tally.seen == 5 and len(tally.bad) == 3
    tally.check()                                                 # 3 of 5, but fewer than 8 seen: no verdict
    other = SkipTally.from_dict({"seen": 10, "bad": {"b.png": "unreadable image", "c.png": "too small"}})
    merged = SkipTally.from_dict(tally.to_dict()).merge(other)
    assert merged.seen == 15 and list(merged.bad) == ["a.png", "b.png", "metadata.jsonl:3", "c.png"]
    merged.check()                                                # 4 of 15
    assert merged.summary().splitlines() == [
        "skipped 4 of 15 samples: 2 too small, 1 unreadable image, 1 malformed metadata line",
        "  too small (first: a.png, c.png)", "  unreadable image (first: b.png)",
        "  malformed metadata line (first: metadata.jsonl:3)"]
    with pytest.raises(DataError, match="(?s)most of the data is bad.*check the data folder"):
        SkipTally.from_dict({"seen": 9, "bad": {str(n): "too small" for n in range(5)}}).check()


def test_no_good_sample_at_all_raises_instead_of_looping(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "metadata.jsonl").write_text("")
    with_bad_files(root, ["corrupt.png", "empty.png", "tiny.png"])
    for world_size, num_workers in ((1, 0), (2, 0), (1, 2)):
        with pytest.raises(DataError, match="^no usable sample: all [23] samples of epoch 0"):
            next(batches(open_dataset(root, RESOLUTION), 2, world_size=world_size, num_workers=num_workers))


def test_a_folder_without_usable_lines_is_refused(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="no metadata.jsonl"):
        open_dataset(root, RESOLUTION)
    (root / "metadata.jsonl").write_text('{"file_name": "../x.png", "text": "t"}\n')
    with pytest.raises(DataError, match="no usable line"):
        open_dataset(root, RESOLUTION)


# -- order: determinism, resume, ranks, workers ---------------------------------------------------

def test_same_seed_same_batches_and_random_crops_ignore_global_rng(folder):
    dataset = open_dataset(folder, RESOLUTION, center_crop=False, random_flip=True)
    torch.manual_seed(1)
    first = take(dataset, 8)
    torch.manual_seed(2)
    random.seed(2)
    assert_same(first, take(dataset, 8))
    assert [b.keys for b in take(dataset, 8, seed=1)] != [b.keys for b in first]
    order = [k for b in first for k in b.keys]
    assert order[:16] != order[16:] and sorted(order[:16]) == sorted(order[16:])   # each epoch reshuffled


def test_crops_and_flips_vary_by_epoch_but_not_by_run(folder):
    dataset = open_dataset(folder, RESOLUTION, center_crop=False, random_flip=True)
    epoch0, epoch1 = dataset.load(0, seed=0, epoch=0), dataset.load(0, seed=0, epoch=1)
    assert torch.equal(epoch0.pixel_values, dataset.load(0, seed=0, epoch=0).pixel_values)
    assert not all(torch.equal(dataset.load(i, epoch=0).pixel_values, dataset.load(i, epoch=1).pixel_values)
                   for i in range(len(dataset)))


def test_resume_equals_the_tail_of_an_uninterrupted_run_without_decoding_earlier_batches(folder, monkeypatch):
    with_bad_files(folder, ["corrupt.png", "tiny.png", "empty.png"])
    dataset = open_dataset(folder, RESOLUTION, center_crop=False, random_flip=True)
    full = take(dataset, 12, batch_size=3)
    assert any(batch.skipped for batch in full)
    decoded = []
    real_decode = folder_module.decode_image
    monkeypatch.setattr(folder_module, "decode_image", lambda data, rules, rng: decoded.append(rng) or
                        real_decode(data, rules, rng))
    for start in (1, 5, 7, 11):
        decoded.clear()
        resumed = take(dataset, 12 - start, batch_size=3, start_batch=start)
        assert_same(full[start:], resumed)
        decoded.clear()
        next(batches(dataset, 3, start_batch=start))
        assert len(decoded) <= 3 + len(full[start].skipped) + 1    # only batch `start` and its lookahead


def test_ranks_read_disjoint_shares_of_each_epoch(folder):
    dataset = open_dataset(folder, RESOLUTION)
    for epoch in range(2):
        rank0 = [k for b in take(dataset, 4, rank=0, world_size=2)[2 * epoch:2 * epoch + 2] for k in b.keys]
        rank1 = [k for b in take(dataset, 4, rank=1, world_size=2)[2 * epoch:2 * epoch + 2] for k in b.keys]
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == sorted(r.file_name for r in dataset.records)


def test_workers_give_the_same_sequence_as_the_main_process(folder):
    with_bad_files(folder, ["corrupt.png", "tiny.png"])
    dataset = open_dataset(folder, RESOLUTION, center_crop=False, random_flip=True)
    assert_same(take(dataset, 9, num_workers=0), take(dataset, 9, num_workers=2))
    assert_same(take(dataset, 4, start_batch=3), take(dataset, 4, start_batch=3, num_workers=2))


def test_bad_arguments_are_refused(folder):
    dataset = open_dataset(folder, RESOLUTION)
    for options in ({"rank": 2, "world_size": 2}, {"start_batch": -1}, {"num_workers": -1}):
        with pytest.raises(DataError):
            batches(dataset, 4, **options)
    with pytest.raises(DataError, match="batch_size"):
        batches(dataset, 0)
    with pytest.raises(DataError, match="resolution"):
        open_dataset(folder, 4)
    with pytest.raises(DataError, match="not a data folder"):
        open_dataset(folder / "img00.png", RESOLUTION)


# -- shards --------------------------------------------------------------------------------------

def all_keys(dataset, count: int = 4) -> list[str]:
    return sorted(k for b in take(dataset, count) for k in b.keys)


def test_shards_from_a_file_a_glob_and_a_brace_pattern(shard_dir):
    one = open_dataset(shard_dir / "data-000.tar", RESOLUTION)
    assert all_keys(one, 1) == [f"data-000.tar:s{n:03d}" for n in range(4)]
    expected = sorted(f"data-{n // 4:03d}.tar:s{n:03d}" for n in range(16))
    assert all_keys(open_dataset(str(shard_dir / "*.tar"), RESOLUTION)) == expected
    assert all_keys(open_dataset(str(shard_dir / "data-{000..003}.tar"), RESOLUTION)) == expected
    listed = open_dataset(str(shard_dir / "data-{000,002}.tar"), RESOLUTION)
    assert listed.shards == [str(shard_dir / "data-000.tar"), str(shard_dir / "data-002.tar")]
    gaps = open_dataset(str(shard_dir / "data-{000..005}.tar"), RESOLUTION)
    assert len(gaps.shards) == 4
    assert gaps.index_skips == [(str(shard_dir / "data-004.tar"), "missing shard"),
                                (str(shard_dir / "data-005.tar"), "missing shard")]
    with pytest.raises(DataError, match="no shard file matches"):
        open_dataset(str(shard_dir / "none-*.tar"), RESOLUTION)


def test_shard_samples_carry_captions_from_txt_or_json(shard_dir):
    batch = take(open_dataset(shard_dir / "data-000.tar", RESOLUTION), 1)[0]
    by_key = {k: (t, p) for k, t, p in zip(batch.keys, batch.texts, batch.pairs)}
    assert by_key["data-000.tar:s000"] == ("caption 0", [("blue", "thing0")])   # json: caption + pairs
    assert by_key["data-000.tar:s001"] == ("caption 1", [])                     # txt


def test_bad_shard_samples_are_skipped_with_their_reason(tmp_path):
    files = bad_files()
    samples = [shard_sample(n) for n in range(6)]
    samples += [(name.split(".")[0], {"png": data, "txt": b"bad"}) for name, (data, _) in files.items()]
    samples += [("nocap", {"png": encode(noise_image(1, (40, 40)))}), ("noimage", {"txt": b"caption"}),
                ("badjson", {"png": encode(noise_image(2, (40, 40))), "json": b"{oops"})]
    path = write_shard(tmp_path / "bad.tar", samples)
    tally = SkipTally()
    for batch in take(open_dataset(path, RESOLUTION), 8):
        assert len(batch.keys) == 4 and not any(k.split(":")[1] in ("nocap", "noimage") for k in batch.keys)
        tally.add(batch)
    expected = {f"bad.tar:{name.split('.')[0]}": reason for name, (_, reason) in files.items()}
    expected |= {"bad.tar:nocap": "no caption", "bad.tar:noimage": "no image", "bad.tar:badjson": "bad caption"}
    assert tally.bad == expected


def test_a_truncated_shard_keeps_its_readable_samples(tmp_path):
    path = write_shard(tmp_path / "cut.tar", [shard_sample(n) for n in range(6)])
    with tarfile.open(path) as tar:
        image = next(member for member in tar.getmembers() if member.name.startswith("s003."))
    path.write_bytes(path.read_bytes()[: image.offset_data + image.size // 2])   # cut inside s003's image
    tally = SkipTally()
    used = set()
    for batch in take(open_dataset(path, RESOLUTION), 3, batch_size=2):
        tally.add(batch)
        used.update(batch.keys)
    assert used == {"cut.tar:s000", "cut.tar:s001", "cut.tar:s002"}
    assert tally.bad == {"cut.tar:s003": "truncated shard member", "cut.tar": "unreadable shard"}
    not_a_tar = tmp_path / "text.tar"
    not_a_tar.write_bytes(b"not a tar file\n" * 100)
    with pytest.raises(DataError, match="no sample"):
        next(batches(open_dataset(not_a_tar, RESOLUTION), 2))


def test_shard_resume_equals_the_tail_without_decoding_earlier_batches(shard_dir, monkeypatch):
    write_shard(shard_dir / "data-004.tar", [shard_sample(20), ("broken", {"png": b"", "txt": b"x"}),
                                           shard_sample(21)])
    dataset = open_dataset(str(shard_dir / "*.tar"), RESOLUTION, center_crop=False, random_flip=True)
    full = take(dataset, 14, batch_size=3)                 # 19 samples: more than 2 epochs
    assert any(batch.skipped for batch in full) and full[-1].epoch == 2
    decoded = []
    real_decode = shards_module.decode_image
    monkeypatch.setattr(shards_module, "decode_image", lambda data, rules, rng: decoded.append(rng) or
                        real_decode(data, rules, rng))
    for start in (1, 6, 9, 13):
        assert_same(full[start:], take(dataset, 14 - start, batch_size=3, start_batch=start))
        decoded.clear()
        next(batches(dataset, 3, start_batch=start))
        assert len(decoded) <= 3 + len(full[start].skipped) + 1    # only batch `start` and its lookahead


def test_indexing_a_shard_reads_headers_not_data(tmp_path, monkeypatch):
    samples = [(f"big{n}", {"png": encode(noise_image(n, (200, 200))), "txt": b"caption"}) for n in range(8)]
    path = write_shard(tmp_path / "big.tar", samples)
    read = []

    class CountingFile(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

        def readinto(self, buffer):
            count = super().readinto(buffer)
            read.append(count)
            return count

    monkeypatch.setattr(tarfile, "bltn_open", lambda name, mode="rb", *args, **kwargs: CountingFile(name, "rb"))
    from llm4gen_core.train.shards import index_shard
    index = index_shard(str(path))
    assert len(index.groups) == 8 and index.problem == ""
    assert sum(read) < os.path.getsize(path) // 10        # headers only: 8 images of 120 kB were skipped


def test_shard_ranks_are_disjoint_by_shard_and_by_sample(shard_dir):
    many = open_dataset(str(shard_dir / "*.tar"), RESOLUTION)     # 4 shards, 2 ranks: whole shards each
    rank0, rank1 = (set(k for b in take(many, 2, rank=r, world_size=2) for k in b.keys) for r in (0, 1))
    assert not rank0 & rank1 and len(rank0 | rank1) == 16
    assert {k.split(":")[0] for k in rank0}.isdisjoint({k.split(":")[0] for k in rank1})
    one = open_dataset(shard_dir / "data-001.tar", RESOLUTION)     # 1 shard, 2 ranks: alternate samples
    rank0, rank1 = (set(k for b in take(one, 1, batch_size=2, rank=r, world_size=2) for k in b.keys) for r in (0, 1))
    assert not rank0 & rank1 and len(rank0 | rank1) == 4


def test_shard_workers_give_the_same_sequence_as_the_main_process(shard_dir):
    write_shard(shard_dir / "data-004.tar", [("broken", {"png": b"junk", "txt": b"x"}), shard_sample(30)])
    dataset = open_dataset(str(shard_dir / "*.tar"), RESOLUTION, center_crop=False, random_flip=True)
    assert_same(take(dataset, 9, batch_size=3), take(dataset, 9, batch_size=3, num_workers=2))


def test_compressed_shards_are_read_too(tmp_path):
    path = write_shard(tmp_path / "data.tar.gz", [shard_sample(n) for n in range(4)], mode="w:gz")
    assert all_keys(open_dataset(path, RESOLUTION), 1) == [f"data.tar.gz:s{n:03d}" for n in range(4)]
