"""Shared fixtures. Host tests (marked ``host``) need a real ComfyUI; where none is found they are set
aside with one line that says so. Nothing else skips. With CI=true both are failures."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _put_this_checkout_on_the_path_as_fewstep():
    """``import fewstep`` means this checkout, installed or not, in this process and its children.
    The repo root is the package but must not be on ``sys.path`` itself (our ``nodes/`` would shadow
    ComfyUI's ``nodes.py``), so a temporary folder holds one link, ``fewstep`` -> the repo root."""
    repo = Path(__file__).resolve().parents[1]
    holder = tempfile.mkdtemp(prefix="fewstep-path-")
    atexit.register(shutil.rmtree, holder, True)
    os.symlink(repo, os.path.join(holder, "fewstep"), target_is_directory=True)
    sys.path.insert(0, holder)
    os.environ["PYTHONPATH"] = os.pathsep.join([holder] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    stale = sys.modules.get("fewstep")
    if stale is not None and Path(stale.__file__).resolve().parent != repo:
        raise RuntimeError(f"fewstep was imported from {stale.__file__} before the tests of {repo} started")


_put_this_checkout_on_the_path_as_fewstep()

import pytest  # noqa: E402
import torch  # noqa: E402

import comfy_host  # noqa: E402  # tests/ is on sys.path through rootdir conftest import (importlib mode below)

# The tests' tensors are small: extra intra-op threads only add overhead, and on a shared machine they
# oversubscribe the cores (a 40 s file took 12 minutes with several test runs side by side).
torch.set_num_threads(int(os.environ.get("FEWSTEP_TEST_THREADS", "1")))

_COMFY = None
_COMFY_SEARCHED = False


def comfy_path():
    global _COMFY, _COMFY_SEARCHED
    if not _COMFY_SEARCHED:
        _COMFY = comfy_host.find_comfyui()
        _COMFY_SEARCHED = True
    return _COMFY


IN_CI = os.environ.get("CI", "").lower() == "true"
NO_COMFY = ("no ComfyUI found ($COMFYUI_PATH, an enclosing ComfyUI's custom_nodes/, ~/comfy/ComfyUI; "
            "`./run test` also tries a copy of ../shared/comfyui)")


def pytest_report_header(config):
    p = comfy_path()
    return f"FewStep host tests: ComfyUI at {p}" if p else f"FewStep: {NO_COMFY}: host tests set aside"


_DESELECTED_HOST = []


def pytest_collection_modifyitems(config, items):
    """Without a ComfyUI, host tests are set aside and reported in one line at the end; with CI=true
    that is an error instead."""
    if comfy_path() is not None:
        return
    host = [it for it in items if "host" in it.keywords or "server" in it.keywords]
    if host and IN_CI:
        raise pytest.UsageError(f"CI=true and {NO_COMFY}: {len(host)} host tests cannot run")
    if host:
        _DESELECTED_HOST.extend(host)
        items[:] = [it for it in items if it not in host]
        config.hook.pytest_deselected(items=host)


def pytest_terminal_summary(terminalreporter):
    p = comfy_path()
    if _DESELECTED_HOST:
        terminalreporter.write_line(f"FewStep: {len(_DESELECTED_HOST)} host tests set aside: {NO_COMFY}")
    elif p is not None:
        terminalreporter.write_line(f"FewStep: host tests ran against the ComfyUI at {p}")


def _skip_is_failure(report):
    """With CI=true nothing may be set aside: a test (or a test module) that skips has failed."""
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true, so a skip is a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_is_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_is_failure(outcome.get_result())


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported in-process in CPU mode, with FewStep's nodes registered."""
    p = comfy_path()
    if p is None:
        pytest.skip(NO_COMFY)
    return comfy_host.import_comfyui(p)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real headless ComfyUI server with this pack installed, torn down after the session."""
    p = comfy_path()
    if p is None:
        pytest.skip(NO_COMFY)
    srv = comfy_host.ComfyServer(p, base=tmp_path_factory.mktemp("comfy-base"))
    srv.start()
    yield srv
    srv.stop()


def _temp_models_folder(kind, tmp_path, monkeypatch):
    """The models folder ``kind`` redirected to a temp dir (the real one is never written)."""
    import folder_paths
    d = tmp_path / kind
    d.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(d)], {".safetensors"}))
    return d


@pytest.fixture
def ays_dir(comfy, tmp_path, monkeypatch):
    return _temp_models_folder("fewstep_ays", tmp_path, monkeypatch)


@pytest.fixture
def olss_dir(comfy, tmp_path, monkeypatch):
    return _temp_models_folder("fewstep_olss", tmp_path, monkeypatch)


@pytest.fixture
def node_texts(comfy, monkeypatch):
    """Run a node as ComfyUI's executor does (inside an executing-node context, node id "7") with a real
    ``server.PromptServer`` whose socket is replaced by a list: ``(texts, run)``; ``run(fn)`` calls ``fn()``
    in the context, and ``texts`` collects every progress text sent to node "7" (decoded from the binary
    message ``PromptServer.send_progress_text`` builds)."""
    import importlib.util
    import struct
    import sys
    mod = sys.modules.get("utils")
    if mod is None or not hasattr(mod, "__path__"):   # ComfyUI's utils/ package, which server.py imports
        init = comfy_path() / "utils" / "__init__.py"
        spec = importlib.util.spec_from_file_location("utils", init, submodule_search_locations=[str(init.parent)])
        pkg = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "utils", pkg)
        spec.loader.exec_module(pkg)
    import server
    from comfy_execution.utils import CurrentNodeContext
    texts = []
    inst = server.PromptServer.__new__(server.PromptServer)   # no sockets, no event loop

    def send_sync(event, data, sid=None):
        if event == server.BinaryEventTypes.TEXT:
            n = struct.unpack(">I", data[:4])[0]
            if data[4:4 + n].decode() == "7":
                texts.append(data[4 + n:].decode("utf-8"))
    inst.send_sync = send_sync
    monkeypatch.setattr(server.PromptServer, "instance", inst, raising=False)

    def run(fn):
        with CurrentNodeContext("test-prompt", "7"):
            return fn()
    return texts, run
