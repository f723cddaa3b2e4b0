"""Finding, importing and serving a real ComfyUI for FewStep's host tests.

Order of search: ``$COMFYUI_PATH``; the ComfyUI whose ``custom_nodes/`` holds this repo;
``~/comfy/ComfyUI``. ``find_comfyui()`` returns None where there is none.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_DIRNAME = "comfyui-fewstep"


def _is_comfyui(p: Path) -> bool:
    return (p / "main.py").is_file() and (p / "comfy" / "samplers.py").is_file() and (p / "nodes.py").is_file()


def find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser().resolve()
        if not _is_comfyui(p):
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py / comfy/samplers.py)")
        return p
    parent = REPO.parent
    if parent.name == "custom_nodes" and _is_comfyui(parent.parent):
        return parent.parent
    home = Path("~/comfy/ComfyUI").expanduser()
    if _is_comfyui(home):
        return home.resolve()
    return None


# ------------------------------------------------------------------------------------------------
# in-process
_HOST = None


def _ensure_fewstep_importable():
    """``import fewstep`` as this checkout: where it is not importable (a script run without the
    test runner's or ./run's path set-up), a temporary folder holding one link fewstep -> the repo
    goes on sys.path, as tests/conftest.py does."""
    try:
        import fewstep  # noqa: F401
        return
    except ImportError:
        pass
    import atexit
    import shutil
    holder = tempfile.mkdtemp(prefix="fewstep-path-")
    atexit.register(shutil.rmtree, holder, True)
    os.symlink(REPO, os.path.join(holder, "fewstep"), target_is_directory=True)
    sys.path.insert(0, holder)


def import_comfyui(path: Path):
    """Import ComfyUI's modules in CPU mode (once per process) and FewStep's nodes with them.
    Returns a namespace with the modules tests need."""
    global _HOST
    if _HOST is not None:
        return _HOST
    path = str(path)
    # the repo root must never shadow ComfyUI's top-level modules (our nodes/ vs ComfyUI's nodes.py)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != str(REPO)]
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_smart_memory = True
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import comfy.samplers
    import comfy.sample
    import comfy.k_diffusion.sampling
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
    import nodes as comfy_nodes
    _ensure_fewstep_importable()
    import fewstep
    import fewstep.nodes as fs_nodes
    fewstep.NODE_CLASS_MAPPINGS.update(fs_nodes.NODE_CLASS_MAPPINGS)
    fewstep.NODE_DISPLAY_NAME_MAPPINGS.update(fs_nodes.NODE_DISPLAY_NAME_MAPPINGS)
    fs_nodes.register_with_comfyui()

    class Host:
        pass

    h = Host()
    h.path = Path(path)
    h.comfy = comfy
    h.nodes = comfy_nodes
    h.folder_paths = folder_paths
    h.fewstep = fewstep
    h.NODES = fs_nodes.NODE_CLASS_MAPPINGS
    _HOST = h
    return h


# ------------------------------------------------------------------------------------------------
# a real headless server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI's main.py on a free loopback port, with this pack symlinked into a temporary base
    directory that has its own models folder and database."""

    def __init__(self, comfy_path: Path, base: Path | None = None, extra_args=()):
        self.comfy_path = Path(comfy_path)
        self.base = Path(base or tempfile.mkdtemp(prefix="fewstep-comfy-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.log_path = self.base / "server.log"
        self.extra_args = list(extra_args)

    def start(self, timeout: float = 240.0):
        cn = self.base / "custom_nodes"
        cn.mkdir(parents=True, exist_ok=True)
        link = cn / PACK_DIRNAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        for sub in ("models", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(exist_ok=True)
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", f"sqlite:///{self.base}/db.sqlite",
               "--disable-auto-launch", *self.extra_args]
        env = dict(os.environ)
        env.pop("COMFYUI_PATH", None)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # --- HTTP ------------------------------------------------------------------------------------
    def request(self, method: str, route: str, body=None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except Exception:
                return e.code, raw

    def get(self, route: str, timeout: float = 30):
        status, body = self.request("GET", route, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {route} -> {status}: {body}")
        return body

    def queue(self, prompt: dict, client_id: str = "fewstep-tests"):
        """POST /prompt. Returns (status, body); 200 alone does not mean valid: check node_errors."""
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": client_id})

    def run(self, prompt: dict, timeout: float = 600, client_id: str = "fewstep-tests") -> dict:
        """Queue a prompt, wait for it, and return its history entry. Raises with the server's words
        on a validation error or a failed run."""
        status, body = self.queue(prompt, client_id)
        if status != 200 or body.get("node_errors"):
            raise AssertionError(f"/prompt -> {status}: {json.dumps(body, indent=1)[:4000]}")
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                st = entry["status"]
                if st.get("status_str") != "success":
                    raise AssertionError(f"prompt {pid} failed: {json.dumps(st, indent=1)[:6000]}")
                return entry
            if pid in hist and hist[pid].get("status", {}).get("status_str") == "error":
                raise AssertionError(f"prompt {pid} failed: {json.dumps(hist[pid]['status'], indent=1)[:6000]}")
            time.sleep(0.3)
        raise AssertionError(f"prompt {pid} did not finish in {timeout}s")
