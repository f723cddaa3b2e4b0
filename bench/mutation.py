"""Mutation testing of FewStep's pure code: plant one small bug at a time and see whether the fast unit
tests catch it.

    nice -n 15 python3 bench/mutation.py                 # the default sample (MUTANTS mutants)
    nice -n 15 python3 bench/mutation.py --quick         # QUICK mutants: a smoke run of a few minutes
    nice -n 15 python3 bench/mutation.py --all           # every mutant (hours on one core)
    nice -n 15 python3 bench/mutation.py --files core/cache_schedule.py --all

Self-contained (ast only): the mutator walks a module's functions and proposes one-token changes
(``+``<->``-``, ``*``<->``/``, a comparison to its neighbour ``<``<->``<=`` / ``==``<->``!=``, ``and``<->``or``,
a dropped ``not``, ``True``<->``False``, an integer constant +1, a float constant x1.5 / 0->1). Each mutant is
written into a scratch copy of the checkout, and the tests mapped to its module (``TESTS``: the unit
tests, the convergence orders for the solvers, and ComfyUI's own AYS node for the published tables,
which needs a ComfyUI as the host tests find it; tests/test_behaviour_lock.py is left out: it compares
the code with its own earlier outputs, so it would kill every solver mutant without saying whether a
real test would) run with ``-x``; a failure or a timeout kills the mutant. Docstrings, messages and ``raise`` statements are
not mutated. The mutants are a deterministic sample (``--seed``) spread over the modules. Prints the
score (killed / all) and every survivor as ``file:line  original -> mutant``.
"""
from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = 40
QUICK = 12
TIMEOUT_S = 300

#: module -> the fast unit tests that cover it
TESTS = {
    "core/cache_schedule.py": ["test_cache_schedule.py"],
    "core/validate.py": ["test_validate.py"],
    "core/families.py": ["test_solvers_common.py", "test_schedules.py"],
    "core/model_sigmas.py": ["test_schedules.py"],
    "schedules/_common.py": ["test_schedules.py"],
    "schedules/basic.py": ["test_schedules.py"],
    "schedules/ays.py": ["test_schedules.py", "test_host_foundation.py"],
    "schedules/beta.py": ["test_schedule_beta.py"],
    "samplers/_common.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_deis_order4.py"],
    "samplers/ddim.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_solvers_sde.py"],
    "samplers/euler.py": ["test_solvers_common.py", "test_solvers_orders.py"],
    "samplers/dpm_solver_pp.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_solvers_sde.py"],
    "samplers/dpm_solver.py": ["test_solvers_common.py", "test_solvers_orders.py"],
    "samplers/deis.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_deis_order4.py"],
    "samplers/pndm.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_deis_order4.py"],
    "samplers/unipc.py": ["test_solvers_common.py", "test_solvers_orders.py"],
    "samplers/edm.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_solvers_sde.py"],
    "samplers/tcd.py": ["test_solvers_common.py", "test_solvers_orders.py", "test_solvers_sde.py"],
    "samplers/noise.py": ["test_noise.py"],
    "samplers/olss.py": ["test_olss.py"],
    "schedules/ays_optimize.py": ["test_ays_optimize.py"],
}

_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Lt: ast.LtE,
         ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
         ast.And: ast.Or, ast.Or: ast.And}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
           ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.And: "and", ast.Or: "or"}


def _skipped(tree):
    """Nodes not to mutate: docstrings, raise statements (their conditions stay), f-strings."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.JoinedStr)):
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
    return skip


def sites(tree):
    """(node index in ast.walk order, line, description) of every mutation, in a stable order."""
    skip = _skipped(tree)
    out = []
    for k, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        for desc in _mutations(node):
            out.append((k, node.lineno, desc))
    return out


def _mutations(node):
    if isinstance(node, ast.BinOp) and type(node.op) in _SWAP:
        yield f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[_SWAP[type(node.op)]]}"
    elif isinstance(node, ast.BoolOp):
        yield f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[_SWAP[type(node.op)]]}"
    elif isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAP:
        yield f"{_SYMBOL[type(node.ops[0])]} -> {_SYMBOL[_SWAP[type(node.ops[0])]]}"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not x -> x"
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield f"{node.value} -> {not node.value}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, int):
        yield f"{node.value} -> {node.value + 1}"
    elif isinstance(node, ast.Constant) and isinstance(node.value, float):
        yield f"{node.value!r} -> {_float_mutant(node.value)!r}"


def _float_mutant(v: float) -> float:
    return 1.0 if v == 0.0 else v * 1.5


def mutate(source: str, index: int) -> str:
    """The source with the mutation at ast.walk index ``index`` applied (unparsed: same semantics)."""
    tree = ast.parse(source)
    for k, node in enumerate(ast.walk(tree)):
        if k != index:
            continue
        if isinstance(node, ast.BinOp):
            node.op = _SWAP[type(node.op)]()
        elif isinstance(node, ast.BoolOp):
            node.op = _SWAP[type(node.op)]()
        elif isinstance(node, ast.Compare):
            node.ops[0] = _SWAP[type(node.ops[0])]()
        elif isinstance(node, ast.UnaryOp):
            return _replace_unary(tree, node)
        elif isinstance(node.value, bool):
            node.value = not node.value
        elif isinstance(node.value, int):
            node.value = node.value + 1
        else:
            node.value = _float_mutant(node.value)
        return ast.unparse(tree)
    raise IndexError(index)


def _replace_unary(tree, target):
    class Drop(ast.NodeTransformer):
        def visit_UnaryOp(self, node):
            self.generic_visit(node)
            return node.operand if node is target else node
    return ast.unparse(Drop().visit(tree))


def sample(files, n: int | None, seed: int):
    """Every (file, index, line, description), or a deterministic sample of ``n`` spread over the files."""
    per_file = {f: [(f,) + s for s in sites(ast.parse((REPO / f).read_text()))] for f in files}
    if n is None:
        return [m for f in files for m in per_file[f]]
    rng = random.Random(seed)
    pools = {f: rng.sample(v, len(v)) for f, v in per_file.items() if v}
    picked = []
    while len(picked) < n and any(pools.values()):
        for f in files:
            if pools.get(f) and len(picked) < n:
                picked.append(pools[f].pop())
    return picked


def scratch_copy() -> Path:
    """A copy of the checkout's package and tests (the tests import the copy as fewstep)."""
    root = Path(tempfile.mkdtemp(prefix="fewstep-mutation-"))
    dst = root / "fewstep"
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.png", "*.jpg", "example_workflows", "docs", "js")
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def run_tests(copy: Path, tests, timeout: int) -> str:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"] + [f"tests/{t}" for t in tests]
    env = dict(os.environ, FEWSTEP_TEST_THREADS="1")
    try:
        r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if r.returncode == 0 else "killed"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help=f"sample {QUICK} mutants")
    g.add_argument("--all", action="store_true", help="every mutant")
    g.add_argument("-n", type=int, default=MUTANTS, help=f"mutants to sample (default {MUTANTS})")
    ap.add_argument("--files", nargs="+", default=sorted(TESTS), help="modules to mutate (default: all of TESTS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per mutant's tests")
    a = ap.parse_args(argv)
    unknown = [f for f in a.files if f not in TESTS]
    if unknown:
        ap.error(f"no tests mapped for {unknown}; known: {sorted(TESTS)}")
    n = None if a.all else (QUICK if a.quick else a.n)
    mutants = sample(a.files, n, a.seed)
    copy = scratch_copy()
    t0 = time.perf_counter()
    results = []
    try:
        for k, (f, index, line, desc) in enumerate(mutants, 1):
            original = (copy / f).read_text()
            (copy / f).write_text(mutate(original, index))
            try:
                verdict = run_tests(copy, TESTS[f], a.timeout)
            finally:
                (copy / f).write_text(original)
            results.append((f, line, desc, verdict))
            print(f"[{k}/{len(mutants)} {time.perf_counter() - t0:.0f}s] {f}:{line} {desc}: {verdict}", flush=True)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    killed = sum(v != "survived" for *_, v in results)
    print(f"\nmutation score: {killed}/{len(results)} = {killed / max(len(results), 1):.0%} killed "
          f"({sum(v == 'timeout' for *_, v in results)} by timeout), seed {a.seed}, "
          f"{time.perf_counter() - t0:.0f} s")
    surv = [r for r in results if r[3] == "survived"]
    if surv:
        print("survivors:")
        for f, line, desc, _ in surv:
            print(f"  {f}:{line}  {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
