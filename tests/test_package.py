"""The pack imports without ComfyUI (for tests and the command line), registers nothing there, and
inside ComfyUI an import error propagates instead of being swallowed."""
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_py(code: str):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd="/", timeout=120)


def test_imports_without_comfyui():
    r = run_py("""
        import sys, fewstep
        assert "comfy" not in sys.modules
        assert fewstep.NODE_CLASS_MAPPINGS == {} and fewstep.WEB_DIRECTORY == "./js"
        import fewstep.schedules, fewstep.samplers, fewstep.core.analytic
        assert "comfy" not in sys.modules, "the core must not import ComfyUI"
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_import_error_inside_comfyui_surfaces():
    """With ComfyUI's modules present (here: stand-ins that lack what the nodes need), importing the
    pack raises, so ComfyUI reports IMPORT FAILED rather than loading an empty pack."""
    r = run_py("""
        import sys, types
        for name in ("comfy", "comfy.samplers"):
            sys.modules[name] = types.ModuleType(name)
        try:
            import fewstep
        except Exception as e:
            print("raised", type(e).__name__)
        else:
            print("swallowed", fewstep.NODE_CLASS_MAPPINGS)
    """)
    assert r.stdout.startswith("raised"), r.stdout + r.stderr


def test_core_modules_import_only_torch_numpy():
    """schedules/, samplers/ and core/ never import ComfyUI (checked on the source text)."""
    import re
    bad = []
    for folder in ("schedules", "samplers", "core"):
        for f in (REPO / folder).glob("*.py"):
            for ln in f.read_text().splitlines():
                if re.match(r"\s*(import|from)\s+(comfy|comfy_extras|folder_paths|nodes|server|execution)\b", ln):
                    bad.append(f"{f.name}: {ln.strip()}")
    assert not bad, bad
