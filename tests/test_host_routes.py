"""GET /fewstep/sigmas: the schedule preview's data. It must answer exactly what the scheduler nodes
output, and refuse bad input with 400 and the reason."""
import sys
import types
import urllib.parse

import pytest
import torch

pytestmark = pytest.mark.host


def _q(**kw):
    return {k: str(v) for k, v in kw.items()}


def _node_sigmas(comfy, node, *args, **kw):
    return comfy.NODES[node]().get_sigmas(*args, **kw)[0]


@pytest.fixture(scope="module")
def routes(comfy):
    from fewstep.nodes import routes
    return routes


@pytest.mark.parametrize("model_type,steps,denoise", [("SD1", 10, 1.0), ("SDXL", 7, 1.0), ("SVD", 25, 0.6), ("SD1", 1, 0.3)])
def test_ays_equals_node_without_model(comfy, routes, model_type, steps, denoise):
    got = routes.sigmas_for_query(_q(schedule="ays", steps=steps, denoise=denoise, model_type=model_type))
    want = _node_sigmas(comfy, "FewStepAYSScheduler", model_type, steps, denoise)
    assert got == want.tolist()
    assert len(got) == steps + 1 and got[-1] == 0.0


@pytest.mark.parametrize("family,shift", [("eps", None), ("flow", 3.0), ("flow", 1.0)])
@pytest.mark.parametrize("schedule,rho", [("karras", 7.0), ("logsnr_uniform", None), ("time_uniform", None),
                                          ("time_quadratic", None), ("polyexponential", 1.5), ("ays", None), ("beta", None)])
def test_fewstep_scheduler_equals_node_on_analytic_model(comfy, routes, family, shift, schedule, rho):
    from fewstep.nodes.analytic import make_analytic_patcher
    model, _, _ = make_analytic_patcher(family, shift or 3.0)
    q = _q(schedule=schedule, steps=9, denoise=0.8, family=family)
    if shift is not None:
        q["shift"] = str(shift)
    if rho is not None:
        q["rho"] = str(rho)
    got = torch.tensor(routes.sigmas_for_query(q), dtype=torch.float64)
    want = _node_sigmas(comfy, "FewStepScheduler", model, schedule, 9, 0.8, rho if rho is not None else 7.0
                        ).double()
    # the route rebuilds the model's float32 sigma grid from its family and shift
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("family,shift", [("eps", None), ("flow", 3.0)])
@pytest.mark.parametrize("model_type", ["SD1", "SDXL", "SVD"])
def test_ays_equals_node_with_analytic_model(comfy, routes, family, shift, model_type):
    """With a model connected the AYS table is remapped onto the model's range (flow: through logSNR)."""
    from fewstep.nodes.analytic import make_analytic_patcher
    model, _, _ = make_analytic_patcher(family, shift or 3.0)
    q = _q(schedule="ays", steps=12, denoise=1.0, model_type=model_type, family=family)
    if shift is not None:
        q["shift"] = str(shift)
    got = torch.tensor(routes.sigmas_for_query(q), dtype=torch.float64)
    want = _node_sigmas(comfy, "FewStepAYSScheduler", model_type, 12, 1.0, model=model).double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_saved_schedule_equals_node(comfy, routes, tmp_path, monkeypatch):
    import folder_paths
    from fewstep.core.io import FORMAT_KEY, atomic_save
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "fewstep_ays", ([str(tmp_path)], {".safetensors"}))
    table = torch.tensor([14.6, 5.0, 2.0, 0.8, 0.3, 0.1, 0.0], dtype=torch.float64)
    atomic_save(tmp_path / "mine.safetensors", {"sigmas": table},
                {FORMAT_KEY: "ays_schedule/1", "family": "eps", "sigma_min": 0.0292})
    got = routes.sigmas_for_query(_q(schedule="ays", steps=9, denoise=0.9, saved_schedule="mine.safetensors"))
    want = _node_sigmas(comfy, "FewStepAYSScheduler", "SD1", 9, 0.9, saved_schedule="mine.safetensors")
    assert got == want.tolist()
    assert got[0] != routes.sigmas_for_query(_q(schedule="ays", steps=9, denoise=0.9))[0]
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(routes.QueryError, match="saved_schedule: .*broken.safetensors"):
        routes.sigmas_for_query(_q(schedule="ays", steps=9, saved_schedule="broken.safetensors"))


def test_sigma_range_model(comfy, routes):
    got = routes.sigmas_for_query(_q(schedule="karras", steps=5, sigma_min=0.002, sigma_max=80, rho=7))
    assert got[0] == pytest.approx(80.0) and got[-2] == pytest.approx(0.002, rel=1e-6) and got[-1] == 0.0
    # EDM's Karras formula, independently
    i = torch.arange(5, dtype=torch.float64) / 4
    want = (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(torch.tensor(got[:-1], dtype=torch.float64), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("query,reason", [
    (dict(steps=10), "schedule is required"),
    (dict(schedule="karrass", steps=10), "schedule must be one of"),
    (dict(schedule="ays"), "steps is required"),
    (dict(schedule="ays", steps="ten"), "steps must be a whole number"),
    (dict(schedule="ays", steps="2.5"), "steps must be a whole number"),
    (dict(schedule="ays", steps=0), "steps must be in [1, 10000]"),
    (dict(schedule="ays", steps=10001), "steps must be in [1, 10000]"),
    (dict(schedule="ays", steps=5, denoise=0), "denoise must be in [0.01, 1]"),
    (dict(schedule="ays", steps=5, denoise="nan"), "denoise must be in"),
    (dict(schedule="ays", steps=5, denoise="x"), "denoise must be a number"),
    (dict(schedule="karras", steps=5, rho=0), "rho must be in (0, 100]"),
    (dict(schedule="karras", steps=5, rho="inf"), "rho must be in"),
    (dict(schedule="ays", steps=5, model_type="SD2"), "model_type must be one of SD1, SDXL, SVD"),
    (dict(schedule="ays", steps=5, model_type="auto"), "model_type auto is decided by the connected model"),
    (dict(schedule="karras", steps=5, model_type="SD1"), "model_type applies to schedule=ays only"),
    (dict(schedule="ays", steps=5, saved_schedule="nope.safetensors"), "saved_schedule 'nope.safetensors' is not"),
    (dict(schedule="karras", steps=5, family="vp"), "family must be one of eps, flow"),
    (dict(schedule="karras", steps=5, family="flow", shift=0), "shift must be in [0.01, 100]"),
    (dict(schedule="karras", steps=5, family="eps", shift=3), "shift applies to family=flow only"),
    (dict(schedule="karras", steps=5, shift=3), "shift needs family=flow"),
    (dict(schedule="karras", steps=5, sigma_min=1, sigma_max=0.5), "0 < sigma_min < sigma_max"),
    (dict(schedule="karras", steps=5, sigma_min=-1, sigma_max=2), "sigma_min must be in (0, 10000]"),
    (dict(schedule="karras", steps=5, family="flow", sigma_min=0.01, sigma_max=2), "flow models have sigma_max <= 1"),
    (dict(schedule="karras", steps=5, sigma_max=2), "sigma_min is required"),
    (dict(schedule="karras", steps=5, stepz=3), "unknown parameter(s) stepz"),
])
def test_bad_queries_name_the_reason(routes, query, reason):
    with pytest.raises(routes.QueryError) as e:
        routes.sigmas_for_query(_q(**query))
    assert reason in str(e.value)


def test_schedule_code_errors_become_the_reason(routes, monkeypatch):
    def refuse(*a, **k):
        raise ValueError("schedule is not strictly decreasing: lower steps")
    monkeypatch.setattr(routes, "get_schedule", refuse)
    with pytest.raises(routes.QueryError, match="lower steps"):
        routes.sigmas_for_query(_q(schedule="karras", steps=5))


def test_repeated_parameter_is_refused(routes):
    with pytest.raises(routes.QueryError, match="steps is given 2 times"):
        routes.sigmas_for_query({"schedule": ["ays"], "steps": ["5", "6"]})


def test_registration_is_idempotent_and_needs_a_server(routes, monkeypatch):
    from aiohttp import web
    monkeypatch.delitem(sys.modules, "server", raising=False)
    assert routes.register_with_comfyui() is False  # no ComfyUI server in this process
    table = web.RouteTableDef()
    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(routes=table)})
    monkeypatch.setitem(sys.modules, "server", fake)
    assert routes.register_with_comfyui() is True
    assert routes.register_with_comfyui() is False
    assert [(r.method, r.path) for r in table] == [("GET", "/fewstep/sigmas")]


# --- through the real server ---------------------------------------------------------------------
def _get(server, route, **params):
    return server.request("GET", f"{route}?{urllib.parse.urlencode(params)}")


@pytest.mark.server
@pytest.mark.parametrize("prefix", ["", "/api"])
def test_route_answers_json_list(comfy_server, comfy, prefix):
    status, body = _get(comfy_server, prefix + "/fewstep/sigmas", schedule="ays", steps=10, model_type="SD1")
    assert status == 200, body
    assert body == _node_sigmas(comfy, "FewStepAYSScheduler", "SD1", 10, 1.0).tolist()
    status, body = _get(comfy_server, prefix + "/fewstep/sigmas", schedule="karras", steps=6, rho=7,
                        family="flow", shift=3)
    assert status == 200 and len(body) == 7 and body[0] == 1.0 and body[-1] == 0.0
    assert all(a > b for a, b in zip(body, body[1:]))


@pytest.mark.server
@pytest.mark.parametrize("params,reason", [
    (dict(schedule="nope", steps=5), "schedule must be one of"),
    (dict(schedule="ays", steps="abc"), "steps must be a whole number"),
    (dict(schedule="ays", steps=99999), "steps must be in [1, 10000]"),
    (dict(schedule="karras", steps=5, denoise=1.5), "denoise must be in [0.01, 1]"),
    (dict(schedule="ays", steps=5, model_type="auto"), "model_type auto"),
])
def test_route_400_with_reason(comfy_server, params, reason):
    status, body = _get(comfy_server, "/fewstep/sigmas", **params)
    assert status == 400, body
    assert reason in body["error"]
