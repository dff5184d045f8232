"""A headless Chromium driven through chromedriver's W3C WebDriver HTTP API, from the standard
library only (no selenium, no browser download): Debian's ``chromium`` + ``chromium-driver``
(scripts/install_browser.sh installs them).

    with Browser.start(artifacts_dir) as browser:
        browser.get("http://127.0.0.1:8188/")
        browser.run("return document.title")
        browser.screenshot(path)

Chromium gets a fresh profile and the switches that stop it from reaching out to the network
(this project's machines have a closed network, which otherwise floods it with retries).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM_SWITCHES = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--metrics-recording-only", "--mute-audio", "--hide-scrollbars",
    "--window-size=1600,1000", "--force-device-scale-factor=1",
)


class BrowserUnavailable(RuntimeError):
    """No chromium/chromedriver on this machine."""


class WebDriverError(RuntimeError):
    pass


def find_binaries() -> tuple[str, str]:
    chromium = os.environ.get("LLM4GEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("LLM4GEN_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        raise BrowserUnavailable(
            f"chromium ({chromium or 'missing'}) and chromedriver ({driver or 'missing'}) are needed: "
            "run scripts/install_browser.sh (as root) or `apt-get install chromium chromium-driver`")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    def __init__(self, driver_process, driver_url: str, session_id: str, profile: str, log_path: Path):
        self._driver = driver_process
        self._url = driver_url
        self.session_id = session_id
        self._profile = profile
        self.log_path = log_path

    @classmethod
    def start(cls, log_dir: str | os.PathLike, timeout: float = 60) -> "Browser":
        chromium, driver = find_binaries()
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        log_path = log_dir / "chromedriver.log"
        # Its own process group, so that quit() can end chromedriver and every browser process
        # it started even if the browser no longer answers; and SIGTERM when we die.
        process = subprocess.Popen([driver, f"--port={port}", f"--log-path={log_path}"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                _call(url, "GET", "/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    _end_group(process)
                    raise BrowserUnavailable(f"chromedriver did not start (see {log_path})")
                time.sleep(0.1)
        profile = tempfile.mkdtemp(prefix="llm4gen-chromium-")
        capabilities = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": [*CHROMIUM_SWITCHES, f"--user-data-dir={profile}"]},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 120_000, "pageLoad": 120_000},
        }}}
        try:
            session = _call(url, "POST", "/session", capabilities, timeout=timeout)
        except BaseException:
            _end_group(process)
            shutil.rmtree(profile, ignore_errors=True)
            raise
        return cls(process, url, session["sessionId"], profile, log_path)

    # --- WebDriver commands ----------------------------------------------------------------

    def command(self, method: str, path: str, payload=None, timeout: float = 180):
        return _call(self._url, method, f"/session/{self.session_id}{path}", payload, timeout=timeout)

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        """Runs ``script`` as a function body in the page (``return`` gives the result; a
        returned Promise is awaited)."""
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script: str, *args, timeout: float = 60, interval: float = 0.25, what: str = ""):
        """Polls ``script`` until it returns something truthy; returns that."""
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = self.run(script, *args)
                if value:
                    return value
            except WebDriverError as e:  # page still loading
                last_error = e
            time.sleep(interval)
        raise TimeoutError(f"waited {timeout:.0f} s for {what or script!r}" + (f" (last error: {last_error})" if last_error else ""))

    def screenshot(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))
        return path

    def find(self, css: str) -> list[str]:
        """Element references of the elements matching a CSS selector."""
        found = self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [next(iter(e.values())) for e in found]

    def click(self, element: str, timeout: float = 10) -> None:
        """A real (trusted) mouse click on the element, as a user's; retried while something
        else (a dialog still animating in) would receive it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("POST", f"/element/{element}/click", {})
                return
            except WebDriverError as e:
                if "click intercepted" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def console(self) -> list[dict]:
        """Browser console entries since the last call."""
        try:
            return self.command("POST", "/se/log", {"type": "browser"})
        except WebDriverError:
            return []

    def quit(self) -> None:
        try:
            self.command("DELETE", "", timeout=30)
        except Exception:
            pass
        _end_group(self._driver)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.quit()


def _die_with_parent() -> None:
    """In the chromedriver child (Linux): SIGTERM when the test process dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _end_group(process: subprocess.Popen) -> None:
    """Stop chromedriver and the browser processes in its process group (ours alone: it was
    started as a new session), politely first."""
    try:
        pgid = os.getpgid(process.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid == process.pid:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.5)  # let the browser's own children go too
    elif process.poll() is None:
        process.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _call(base: str, method: str, path: str, payload=None, timeout: float = 180):
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"{}")
        except ValueError:
            body = {}
        value = body.get("value") or {}
        raise WebDriverError(f"{method} {path}: {value.get('error', e.code)}: {value.get('message', '')[:2000]}") from None
    return body.get("value")
