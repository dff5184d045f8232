"""The runner's ComfyUI base directory (scripts/comfyui_server.prepare_base) is shared by every
checkout of the pack: the default one holds the user's models. Its custom_nodes link must follow
the checkout that runs, whichever ran first, also when that one was moved or deleted."""
from __future__ import annotations

import os
import threading

import pytest

from scripts import comfyui_server as cs


def checkout(path):
    (path / "nodes").mkdir(parents=True)
    (path / "__init__.py").write_text("")
    return path


def pack_link(base):
    return base / "custom_nodes" / cs.PACK_LINK


def leftovers(base):
    return sorted(p.name for p in (base / "custom_nodes").iterdir() if p.name != cs.PACK_LINK)


def test_a_second_checkout_takes_over_the_shared_base(tmp_path):
    first, second = checkout(tmp_path / "first"), checkout(tmp_path / "second")
    base = tmp_path / "comfyui-base"
    cs.prepare_base(base, pack=first)
    assert pack_link(base).resolve() == first.resolve()
    cs.prepare_base(base, pack=second)  # was: FileExistsError
    assert pack_link(base).is_symlink() and pack_link(base).resolve() == second.resolve()
    cs.prepare_base(base, pack=first)  # and back
    assert pack_link(base).resolve() == first.resolve()
    cs.prepare_base(base, pack=first)  # unchanged: nothing to do
    assert pack_link(base).resolve() == first.resolve()
    assert leftovers(base) == []


def test_a_moved_checkout_leaves_a_dangling_link_that_is_re_pointed(tmp_path):
    old = checkout(tmp_path / "old")
    base = cs.prepare_base(tmp_path / "base", pack=old)
    moved = tmp_path / "moved"
    old.rename(moved)
    assert not pack_link(base).exists()  # dangling
    cs.prepare_base(base, pack=moved)
    assert pack_link(base).resolve() == moved.resolve()
    assert leftovers(base) == []


def test_checkouts_racing_for_the_link_leave_one_of_theirs(tmp_path):
    packs = [checkout(tmp_path / f"pack{i}") for i in range(4)]
    base = cs.prepare_base(tmp_path / "base", pack=packs[0])
    errors = []

    def run(pack):
        try:
            for _ in range(50):
                cs.prepare_base(base, pack=pack)
        except Exception as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in packs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert pack_link(base).resolve() in {p.resolve() for p in packs}
    assert leftovers(base) == []


def test_a_real_folder_in_place_of_the_link_is_left_alone_with_a_clear_error(tmp_path):
    pack = checkout(tmp_path / "pack")
    base = tmp_path / "base"
    clone = checkout(pack_link(base))  # someone cloned another copy right there
    with pytest.raises(cs.LinkError, match="is a folder, not a link"):
        cs.prepare_base(base, pack=pack)
    assert clone.is_dir() and not clone.is_symlink()
    cs.prepare_base(base, pack=clone)  # the clone itself: fine as it is
    assert os.listdir(base / "custom_nodes") == [cs.PACK_LINK]
