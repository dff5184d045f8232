"""A long-running server: ComfyUI's own main.py on loopback, fed 100+ queued prompts that mix good
graphs and bad ones (a Cross-Adapter of the wrong width, a corrupt file, a missing file, an LLM
folder without weights, graphs that fail validation), with POST /interrupt aimed at running
prompts and queue deletes of pending ones; then 8 distinct Cross-Adapters and 4 distinct LLMs
loaded one after another, and POST /free.

Checked: every prompt ends as expected in /history (completed, or failed with the pack's clear
message, or interrupted) or, when deleted, never runs; the server answers every request and stays
up; no model of an earlier prompt stays alive (a probe node counts live LLM4GEN objects after a
garbage collection); ComfyUI reports no leaked model; and the server's resident memory after the
run stays within RSS_BOUND of what it was after warm-up.

The soak runs its own server on its own base directory (so that the probe node pack is loaded and
the memory figures are the soak's alone), with the same harness as the ``comfy_server`` fixture.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import comfy_harness
from scripts import llm4gen_graphs as lg
from scripts import stock_graphs as g
from comfy_harness import ComfyValidationError
from synthetic import sd15

pytestmark = [pytest.mark.host, pytest.mark.slow]

PROBE_PACK = Path(__file__).resolve().parent / "soak_probe_pack"
PROBE = "LLM4GENTestLiveObjects"
WAVES, GOOD_PER_WAVE = 9, 6
TARGET_STEPS = 10  # long enough for POST /interrupt to land while the sampler runs
N_ADAPTERS, N_LLMS = 8, 4
# Resident memory the server may keep beyond its post-warm-up figure. Leaking the models loaded in
# the run would add more: the 8 distinct Cross-Adapters hold 28 MB of weights each (224 MB), the 4
# distinct LLMs 33 MB each (132 MB), and the run loads the wrong-width Cross-Adapter 9 times.
RSS_BOUND = 192 << 20
POSITIVE = "a photo of an astronaut on the moon, the earth in the sky"


def _cam(path: Path, llm_dim: int, seed: int) -> Path:
    from llm4gen_core import CrossAdapterConfig, save_cross_adapter
    from synthetic.cam import cam_state

    cfg = CrossAdapterConfig(clip_dim=768, llm_dim=llm_dim, heads=8, ffn_dim=3072, depth=1)
    save_cross_adapter(cam_state(cfg, seed=seed), path, cfg)
    return path


def _llm(folder: Path, seed: int) -> Path:
    from synthetic.llm import tiny_t5_encoder, tiny_t5_rankgen_folder

    model = tiny_t5_encoder(seed=seed, vocab_size=32128, d_model=256, d_kv=32, num_heads=8, d_ff=512)
    return tiny_t5_rankgen_folder(folder, model, fmt="safetensors")


@pytest.fixture(scope="module")
def soak(tmp_path_factory, llm4gen_models):
    base = comfy_harness.ComfyBase(tmp_path_factory.mktemp("soak-base"))
    (base.root / "custom_nodes" / "llm4gen_soak_probe").symlink_to(PROBE_PACK, target_is_directory=True)
    files = tmp_path_factory.mktemp("soak-models")
    broken_llm = files / "llm-without-weights"
    broken_llm.mkdir()
    (broken_llm / "config.json").write_text((llm4gen_models.llm_path / "config.json").read_text())
    corrupt = files / "corrupt-cam.safetensors"
    corrupt.write_bytes(llm4gen_models.adapter_path.read_bytes()[:5000])
    names = SimpleNamespace(
        ckpt=base.place("checkpoints", sd15.small_sd15_checkpoint(), "sd15-small.safetensors"),
        llm=base.place("LLM", llm4gen_models.llm_path),
        adapter=base.place("llm4gen", llm4gen_models.adapter_path),
        wrong_width=base.place("llm4gen", _cam(files / "wrong-width-cam.safetensors", 48, seed=1)),
        corrupt=base.place("llm4gen", corrupt),
        broken_llm=base.place("LLM", broken_llm),
        adapters=[base.place("llm4gen", _cam(files / f"distinct-cam-{i}.safetensors", llm4gen_models.llm_dim, seed=20 + i))
                  for i in range(N_ADAPTERS)],
        llms=[base.place("LLM", _llm(files / f"distinct-llm-{i}", seed=40 + i)) for i in range(N_LLMS)],
        warm_adapter=base.place("llm4gen", _cam(files / "warm-up-cam.safetensors", llm4gen_models.llm_dim, seed=19)),
        warm_llm=base.place("LLM", _llm(files / "warm-up-llm", seed=39)),
    )
    server = comfy_harness.ComfyServer(base)
    try:
        yield SimpleNamespace(server=server, names=names, llm_dim=llm4gen_models.llm_dim)
    finally:
        server.stop()


# --- graphs -----------------------------------------------------------------------------------

def good(names, seed: int, llm_text: str | None = None, cross: bool = False, steps: int = 1,
         adapter: str | None = None) -> dict:
    """The release's graph at 64x64. The CLIP text is always the same (ComfyUI caches its encode:
    CLIP-L in fp16 on a CPU costs seconds); ``llm_text`` changes what LLM Encode gets."""
    prompt = g.txt2img(names.ckpt, POSITIVE, "", steps=steps, seed=seed, prefix="soak", record=False,
                       save_latent=False)
    prompt = (lg.with_cross_adapter if cross else lg.with_apply)(prompt, names.llm, adapter or names.adapter)
    if llm_text is not None:
        prompt[lg.ENC_POS]["inputs"]["text"] = llm_text
    return prompt


def bad_graphs(names) -> list[tuple[str, dict, str]]:
    """(kind, prompt, what the error message must contain)."""
    without_weights = g.txt2img(names.ckpt, POSITIVE, "", steps=1, record=False, save_latent=False)
    return [
        ("wrong width", good(names, 5, adapter=names.wrong_width),
         f"LLM features are {SOAK_LLM_DIM} wide but this Cross-Adapter expects 48"),
        ("corrupt file", good(names, 6, adapter=names.corrupt), names.corrupt),
        ("missing file", good(names, 7, adapter="no-such-cam.safetensors"),
         "Cross-Adapter file 'no-such-cam.safetensors' is not in models/llm4gen"),
        ("LLM without weights", lg.with_apply(without_weights, names.broken_llm, names.adapter), names.broken_llm),
    ]


def fuse_only(names, adapter: str, label: str) -> dict:
    """Load a Cross-Adapter and fuse with it (through ComfyUI's model management), then count live
    objects: the sampler and VAE of the full graph add nothing to what this checks."""
    prompt = lg.with_apply(g.txt2img(names.ckpt, POSITIVE, "", record=False, save_latent=False), names.llm, adapter)
    keep = {g.CKPT, g.POS, g.NEG, lg.LOAD_LLM, lg.LOAD_CAM, lg.ENC_POS, lg.ENC_NEG, lg.FUSE_POS, lg.FUSE_NEG}
    prompt = {k: v for k, v in prompt.items() if k in keep}
    prompt["probe"] = {"class_type": PROBE, "inputs": {"label": label, "anything": [lg.FUSE_POS, 0]}}
    return prompt


def llm_only(name: str, label: str) -> dict:
    return {"llm": {"class_type": "LLM4GENLoadLLM", "inputs": {"model": name, "dtype": "auto", "device": "default"}},
            "enc": {"class_type": "LLM4GENLLMEncode", "inputs": {"llm": ["llm", 0], "text": POSITIVE, "max_tokens": 64}},
            "probe": {"class_type": PROBE, "inputs": {"label": label, "anything": ["enc", 0]}}}


def probe_only(label: str) -> dict:
    return {"probe": {"class_type": PROBE, "inputs": {"label": label}}}


def invalid_graphs(names) -> list[dict]:
    unknown = good(names, 1)
    unknown["extra"] = {"class_type": "NoSuchNodeAnywhere", "inputs": {}}
    missing_input = good(names, 2)
    del missing_input[g.SAMPLER]["inputs"]["seed"]
    dangling = good(names, 3)
    dangling[lg.FUSE_POS]["inputs"]["conditioning"] = ["no-such-node", 0]
    bad_value = good(names, 4)
    bad_value[g.SAMPLER]["inputs"]["steps"] = "many"
    return [unknown, missing_input, dangling, bad_value]


# --- the run ----------------------------------------------------------------------------------

class Soak:
    """Queues prompts, watches the queue, interrupts and deletes, and keeps the books."""

    def __init__(self, server, names):
        self.server, self.names = server, names
        self.prompts: list[dict] = []   # {"id", "kind", "expect", "target", "deleted"}
        self.requests = 0
        self.interrupts_sent = 0
        self.validation_errors = 0

    def request(self, method, path, payload=None):
        status, answer = self.server.request(method, path, payload, timeout=60)
        self.requests += 1
        assert status == 200, f"{method} {path} answered {status}: {answer}"
        return answer

    def queue(self, prompt: dict, kind: str, expect: str | None = None, target: bool = False) -> str:
        prompt_id = self.server.queue(prompt)
        self.requests += 1
        self.prompts.append({"id": prompt_id, "kind": kind, "expect": expect, "target": target, "deleted": False})
        return prompt_id

    def drain(self, timeout: float = 600) -> None:
        """Poll /queue until it is empty, interrupting each target once it has run for 0.3 s."""
        deadline = time.monotonic() + timeout
        seen_running: dict[str, float] = {}
        targets = {p["id"] for p in self.prompts if p["target"]}
        last_stats = 0.0
        while time.monotonic() < deadline:
            assert self.server.process.poll() is None, f"the server died:\n{self.server.log_tail()}"
            answer = self.request("GET", "/queue")
            running = [item[1] for item in answer["queue_running"]]
            if not running and not answer["queue_pending"]:
                return
            now = time.monotonic()
            for prompt_id in running:
                if prompt_id in targets and prompt_id not in seen_running:
                    seen_running[prompt_id] = now
                elif prompt_id in targets and seen_running[prompt_id] > 0 and now - seen_running[prompt_id] > 0.3:
                    self.request("POST", "/interrupt", {"prompt_id": prompt_id})
                    self.interrupts_sent += 1
                    seen_running[prompt_id] = -1.0  # once
            if now - last_stats > 1.0:
                assert "system" in self.request("GET", "/system_stats")
                last_stats = now
            time.sleep(0.05)
        raise TimeoutError(f"the queue did not drain within {timeout:.0f} s:\n{self.server.log_tail()}")

    def run_and_wait(self, prompt: dict, kind: str) -> dict:
        prompt_id = self.queue(prompt, kind, "success")
        return self.server.wait(prompt_id, timeout=300)

    def probe(self, label: str, prompt: dict | None = None, kind: str = "probe") -> dict:
        entry = self.run_and_wait(prompt or probe_only(label), kind)
        report = entry["outputs"]["probe"]["llm4gen_live"][0]
        return json.loads(report)

    def wave(self, w: int) -> None:
        """12 prompts: 6 good (the Cross-Adapter node's graph among them; new LLM text in two), an
        interrupt target, 3 bad, 2 deleted while pending; and a graph that fails validation."""
        names = self.names
        for i in range(GOOD_PER_WAVE):
            llm_text = f"{POSITIVE}, wave {w}, prompt {i}" if i in (0, 4) else None
            self.queue(good(names, seed=100 * w + i, llm_text=llm_text, cross=i == 3), "good", "success")
            if i == 1:
                self.queue(good(names, seed=w, steps=TARGET_STEPS), "interrupt target", "success", target=True)
            if i == 2:
                for kind, prompt, message in bad_graphs(names)[w % 2: w % 2 + 3]:
                    self.queue(prompt, kind, message)
        doomed = [self.queue(good(names, seed=900 + w * 2 + k), "deleted", None) for k in range(2)]
        self.request("POST", "/queue", {"delete": doomed})
        for p in self.prompts:
            if p["id"] in doomed:
                p["deleted"] = True
        with pytest.raises(ComfyValidationError):
            self.server.queue(invalid_graphs(names)[w % 4])
        self.validation_errors += 1
        self.drain()

    def warm_up(self) -> dict:
        """One prompt of every kind the run has, so that the memory figure taken after it holds
        ComfyUI's and the allocator's working set, and growth after it is what repetition adds."""
        names = self.names
        self.run_and_wait(good(names, seed=1), "warm-up")
        self.run_and_wait(good(names, seed=2, cross=True), "warm-up")
        self.run_and_wait(good(names, seed=3, steps=TARGET_STEPS), "warm-up")
        self.run_and_wait(good(names, seed=4, llm_text=f"{POSITIVE}, warm-up"), "warm-up")
        for kind, prompt, message in bad_graphs(names):
            self.queue(prompt, kind, message)
            self.drain()
        self.probe("warm-up adapter", fuse_only(names, names.warm_adapter, "warm-up adapter"), "warm-up")
        self.probe("warm-up llm", llm_only(names.warm_llm, "warm-up llm"), "warm-up")
        return self.probe("after warm-up")


SOAK_LLM_DIM = 32  # tiny RankGen T5 of the llm4gen_models fixture


def _outcome(entry: dict | None) -> tuple[str, str]:
    """("success" | "error" | "interrupted" | "absent", the error message)."""
    if not entry:
        return "absent", ""
    for event, data in (entry.get("status") or {}).get("messages", []):
        if event == "execution_interrupted":
            return "interrupted", ""
        if event == "execution_error":
            return "error", data.get("exception_message", "")
    return ("success", "") if (entry.get("status") or {}).get("completed") else ("unknown", json.dumps(entry)[:500])


def test_server_soak(soak, capsys):
    assert soak.llm_dim == SOAK_LLM_DIM
    run = Soak(soak.server, soak.names)
    names = soak.names
    start = time.monotonic()
    warm = run.warm_up()
    phases = {"warm-up": time.monotonic() - start}

    for w in range(WAVES):
        run.wave(w)
    after_waves = run.probe("after the waves")
    phases["waves"] = time.monotonic() - start - sum(phases.values())

    per_adapter = [run.probe(f"adapter {i}", fuse_only(names, name, f"adapter {i}"), kind="distinct adapter")
                   for i, name in enumerate(names.adapters)]
    per_llm = [run.probe(f"llm {i}", llm_only(name, f"llm {i}"), kind="distinct LLM") for i, name in enumerate(names.llms)]
    after_distinct = run.probe("after the distinct models")
    phases["distinct models"] = time.monotonic() - start - sum(phases.values())

    run.request("POST", "/free", {"unload_models": True, "free_memory": True})
    run.probe("the prompt after /free, when ComfyUI reads its flags")
    after_free = run.probe("after /free")
    seconds = time.monotonic() - start

    # every prompt: as expected in /history, or never run when deleted
    outcomes = {p["id"]: _outcome(run.request("GET", f"/history/{p['id']}").get(p["id"])) for p in run.prompts}
    bad = []
    stray_interrupts = 0
    for p in run.prompts:
        status, message = outcomes[p["id"]]
        if p["deleted"]:
            ok = status == "absent"
        elif status == "interrupted":
            ok = True
            stray_interrupts += not p["target"]
        elif p["expect"] == "success":
            ok = status == "success"
        else:
            ok = status == "error" and str(p["expect"]) in message
        if not ok:
            bad.append(f"{p['kind']} {p['id']}: {status} {message[:300]}")
    assert not bad, "\n".join(bad)
    kinds = {}
    for p in run.prompts:
        kinds.setdefault(p["kind"], []).append(outcomes[p["id"]][0])
    interrupted_targets = kinds["interrupt target"].count("interrupted")
    assert interrupted_targets >= WAVES // 2, f"interrupts did not land: {kinds['interrupt target']}"
    assert stray_interrupts <= run.interrupts_sent - interrupted_targets, "an interrupt stopped a prompt it did not aim at"
    # README.md and README-safety.md: 135 prompts (11 warm-up, 12 a wave, 16 probes and distinct models)
    assert len(run.prompts) == 135 and kinds["deleted"].count("absent") == 2 * WAVES
    final_queue = run.request("GET", "/queue")
    assert not final_queue["queue_running"] and not final_queue["queue_pending"]
    assert soak.server.process.poll() is None

    # no model outlives the prompts that use it: at most one alive while each runs (README-safety.md)
    for report in per_adapter:
        assert report["counts"]["CrossAdapter"] <= 1, report
    for report in per_llm:
        assert report["counts"]["T5EncoderModel"] <= 1, report
    for report in (after_waves, after_distinct, after_free):
        assert report["counts"]["CrossAdapter"] == report["counts"]["T5EncoderModel"] == 0, report
        assert report["counts"]["LoadedLLM"] == report["counts"]["LoadedAdapter"] == 0, report
    log = soak.server.log()
    assert "WARNING, memory leak with model" not in log

    # resident memory (read by the probe after a garbage collection and malloc_trim)
    mib = lambda r, key="rss": f"{r[key] / 2**20:.0f} MiB"  # noqa: E731
    with capsys.disabled():
        print(f"\nsoak: {len(run.prompts)} prompts queued ({sum(p['deleted'] for p in run.prompts)} deleted, "
              f"{run.validation_errors} more refused by validation, {run.interrupts_sent} interrupts sent, "
              f"{interrupted_targets} targets and {stray_interrupts} others interrupted), {run.requests} requests, "
              f"{seconds:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())}); outcomes: "
              + "; ".join(f"{k}: {dict((s, v.count(s)) for s in sorted(set(v)))}" for k, v in kinds.items()))
        print(f"soak RSS after malloc_trim (untrimmed): warm-up {mib(warm)} ({mib(warm, 'rss_untrimmed')}), waves "
              f"{mib(after_waves)} ({mib(after_waves, 'rss_untrimmed')}), {N_ADAPTERS} adapters + {N_LLMS} LLMs "
              f"{mib(after_distinct)} ({mib(after_distinct, 'rss_untrimmed')}), /free {mib(after_free)} "
              f"({mib(after_free, 'rss_untrimmed')}); bound: warm-up + {RSS_BOUND >> 20} MiB. Live Cross-Adapters "
              f"while each distinct one ran: {[r['counts']['CrossAdapter'] for r in per_adapter]}, live T5 models "
              f"while each distinct LLM ran: {[r['counts']['T5EncoderModel'] for r in per_llm]}; "
              f"'Potential memory leak' log lines: {log.count('Potential memory leak')}")
    for report in (after_waves, after_distinct, after_free):
        assert report["rss"] <= warm["rss"] + RSS_BOUND, report
