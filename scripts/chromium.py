"""Debian's headless Chromium, driven by selenium 4 through Debian's chromedriver (both from apt:
scripts/install_browser.sh; selenium from tests/requirements.txt). Nothing is downloaded.

    with chromium.start(artifacts_dir) as driver:   # a selenium WebDriver
        driver.get("http://127.0.0.1:8188/")
        driver.execute_script("return document.title")
        driver.save_screenshot(path)

Both binaries are given by path, so selenium never runs Selenium Manager (its tool that looks up
and downloads browsers and drivers); SE_OFFLINE=true would keep that tool offline anyway.
Chromium gets a fresh profile, a fixed window, and the switches that stop it from reaching out to
the network (this project's machines have a closed network, which otherwise floods it with
retries). chromedriver's log goes to ``<artifacts_dir>/chromedriver.log``.

    LLM4GEN_CHROMIUM / LLM4GEN_CHROMEDRIVER   use these binaries instead of the system ones
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

SWITCHES = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--metrics-recording-only", "--mute-audio", "--hide-scrollbars",
    "--window-size=1600,1000", "--force-device-scale-factor=1",
)


class BrowserUnavailable(RuntimeError):
    """No chromium, chromedriver or selenium on this machine."""


def find_binaries() -> tuple[str, str]:
    """Paths of chromium and chromedriver; BrowserUnavailable (naming the fix) without them."""
    chromium = _which("LLM4GEN_CHROMIUM", "chromium", "chromium-browser")
    driver = _which("LLM4GEN_CHROMEDRIVER", "chromedriver")
    if not chromium or not driver:
        raise BrowserUnavailable(
            f"chromium ({chromium or 'missing'}) and chromedriver ({driver or 'missing'}) are needed: "
            "run scripts/install_browser.sh (as root) or `apt-get install chromium chromium-driver`")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserUnavailable("selenium is needed: run scripts/bootstrap.sh "
                                 "or `pip install -r tests/requirements.txt`") from None
    return chromium, driver


def _which(variable: str, *names: str) -> str | None:
    """The executable $variable names if set (else missing), or the first of names on PATH."""
    if os.environ.get(variable):
        return shutil.which(os.environ[variable])
    return next(filter(None, map(shutil.which, names)), None)


@contextlib.contextmanager
def start(log_dir: str | os.PathLike):
    """A selenium Chrome WebDriver on Debian's chromium; quits it and its processes on exit."""
    chromium, driver_path = find_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llm4gen-chromium-", ignore_cleanup_errors=True) as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for switch in (*SWITCHES, f"--user-data-dir={profile}"):
            options.add_argument(switch)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.timeouts = {"script": 120_000, "pageLoad": 120_000}
        # driver_path_env_key: selenium would otherwise let $SE_CHROMEDRIVER replace the path given.
        # Own process group, so that chromedriver and every browser process it started can be
        # ended even if they no longer answer; SIGTERM to chromedriver if this process dies.
        service = Service(executable_path=driver_path, log_output=str(log_dir / "chromedriver.log"),
                          driver_path_env_key="LLM4GEN_CHROMEDRIVER",
                          popen_kw={"start_new_session": True, "preexec_fn": _die_with_parent})
        try:
            driver = webdriver.Chrome(options=options, service=service)
            try:
                yield driver
            finally:
                driver.quit()
        finally:
            if getattr(service, "process", None) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)  # the group outlives a reaped leader


def _die_with_parent() -> None:
    """In the chromedriver child (Linux): SIGTERM when the test process dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
