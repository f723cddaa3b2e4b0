"""Shared fixtures. Host tests (marked ``host``) need a real ComfyUI; where none is found they skip
with one line that says so. Nothing else skips."""
from __future__ import annotations

import pytest

import comfy_host  # tests/ is on sys.path through rootdir conftest import (importlib mode below)

_COMFY = None
_COMFY_SEARCHED = False


def comfy_path():
    global _COMFY, _COMFY_SEARCHED
    if not _COMFY_SEARCHED:
        _COMFY = comfy_host.find_comfyui()
        _COMFY_SEARCHED = True
    return _COMFY


NO_COMFY = ("no ComfyUI found ($COMFYUI_PATH, an enclosing ComfyUI's custom_nodes/, ~/comfy/ComfyUI): "
            "host tests skipped")


def pytest_report_header(config):
    p = comfy_path()
    return f"FewStep host tests: ComfyUI at {p}" if p else f"FewStep: {NO_COMFY}"


def pytest_collection_modifyitems(config, items):
    if comfy_path() is None:
        skip = pytest.mark.skip(reason=NO_COMFY)
        for item in items:
            if "host" in item.keywords or "server" in item.keywords:
                item.add_marker(skip)


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
