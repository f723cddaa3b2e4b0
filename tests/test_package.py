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


def test_every_node_module_is_registered():
    """nodes/__init__.py imports its node modules by name: a module of nodes/ that defines
    NODE_CLASS_MAPPINGS but is missing from NODE_MODULES would silently load no nodes."""
    import ast
    tree = ast.parse((REPO / "nodes" / "__init__.py").read_text())
    listed = next({e.id for e in n.value.elts} for n in tree.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "NODE_MODULES")
    defining = {p.stem for p in (REPO / "nodes").glob("*.py")
                if any(isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "NODE_CLASS_MAPPINGS"
                       for n in ast.parse(p.read_text()).body) and p.stem != "__init__"}
    assert defining == listed


def test_comfyui_internals_stay_in_the_adapter():
    """KSampler's lists, the server module, model unwrapping, the CONST class and outer_sample's argument
    positions are read in comfy_adapter.py only."""
    import re
    internals = re.compile(r"SAMPLER_NAMES|SCHEDULER_NAMES|SCHEDULER_HANDLERS|KSAMPLER_NAMES|sys\.modules\.get\(\"server|"
                           r"inner_model\.model_patcher|\"model_patcher\"|\"CONST\"|model_sampling\.CONST|_OUTER_POS")
    bad = []
    for p in sorted(REPO.glob("*.py")) + sorted(REPO.glob("nodes/*.py")) + sorted(REPO.glob("patches/*.py")) \
            + sorted(REPO.glob("core/*.py")):
        if p.name == "comfy_adapter.py":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if internals.search(line):
                bad.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
