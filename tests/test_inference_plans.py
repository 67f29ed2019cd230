"""Forward plans (`lightning_modules.inference`): every shipped network gives the plain path's outputs under every
plan, the plans file is what runs read, and the plain mode really is the module's own forward."""
import json

import pytest
import torch

from lightning_modules import create, inference
from lightning_modules.inference import (
    PLAIN,
    ForwardPlan,
    PlannedForward,
    forward_mode,
    plan_task_model,
    planned,
    relative_difference,
)

RESTORERS = ["dncnn.compact", "arcnn.compact", "dagn.compact", "fbcnn.compact", "jarcal.compact",
             "n2n_unet.compact", "dualpriors.compact"]
# the fast paths a plan can take; each must reproduce the plain forward (traced ones also check themselves)
CANDIDATES = [ForwardPlan("channels_last"), ForwardPlan("contiguous", True, 2), ForwardPlan("channels_last", True, 1)]


@pytest.fixture(autouse=True)
def _no_recorded_plans(monkeypatch):
    monkeypatch.setattr(inference, "_PLANS", {})


def _fresh(module):
    module.__dict__.pop("_planned", None)  # the module's planned network is built once per mode and network
    return module


@pytest.mark.parametrize("name", RESTORERS)
def test_restorer_plans_equal_the_plain_forward(name, monkeypatch):
    module = create(name).eval()
    x = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with forward_mode("plain"):
        plain = module.restore(x)
    for plan in CANDIDATES:
        monkeypatch.setattr(inference, "_PLANS", {name: plan})
        outs = [_fresh(module).restore(x)] + [module.restore(x) for _ in range(2)]  # the 2nd sight traces
        for out in outs:
            assert out.shape == plain.shape
            assert float((out - plain).abs().max()) <= 1e-5, plan.label()


@pytest.mark.parametrize("task,name,shape", [("classification", "efficientnet_lite0", (3, 3, 224, 224)),
                                             ("classification", "shapes-cnn", (3, 3, 64, 64)),
                                             ("segmentation", "shapes-pspnet", (3, 3, 64, 64))])
def test_task_model_plans_equal_the_plain_forward(task, name, shape):
    from lightning_modules.task_models import create_task_model

    net = create_task_model(task, name).net.eval()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = net(x)
        for plan in CANDIDATES:
            fwd = plan_task_model(net, name, plan)
            for _ in range(3):
                assert relative_difference(fwd(x), plain) <= 1e-5, plan.label()


def _human_models():
    from lightning_modules.task_models.human_models import HumanModelsError, human_model_files

    try:
        human_model_files("centernet_mbv3"), human_model_files("nanodet_g")
    except HumanModelsError as e:
        pytest.skip(f"the packaged detectors are not installed here: {e}")


@pytest.mark.parametrize("name", ["centernet_mbv3", "nanodet_g"])
def test_detector_plans_run_on_the_dense_network_and_keep_the_detections(name, rng):
    from .conftest import smooth_image

    from lightning_modules.task_models import create_task_model

    _human_models()
    det = create_task_model("detection", name).net.eval()
    photo = torch.from_numpy(smooth_image(rng, 150, 200)).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        plain = det([photo])
        dense_in = torch.rand(1, 3, *( (512, 512) if name == "centernet_mbv3" else (416, 416)))
        dense_plain = det.dense_net(dense_in)
        for plan in CANDIDATES:
            fwd = plan_task_model(det, name, plan)
            assert fwd is det and isinstance(det.__dict__["planned_dense"], PlannedForward)
            assert "planned_dense" not in dict(det.named_modules())  # no new state-dict keys
            for _ in range(3):
                assert relative_difference(inference.dense(det)(dense_in), dense_plain) <= 1e-5
                out = fwd([photo])
                assert torch.equal(out[0]["labels"], plain[0]["labels"])
                assert relative_difference(out[0]["scores"], plain[0]["scores"]) <= 1e-5
        plan_task_model(det, name, PLAIN)
        assert inference.dense(det) is det.dense_net  # a plain plan is the network itself


def test_plain_mode_is_the_module_itself_and_weights_stay_nchw(monkeypatch):
    module = create("dncnn").eval()
    monkeypatch.setattr(inference, "_PLANS", {"dncnn.compact": ForwardPlan("channels_last", True, 1)})
    x = torch.rand(2, 3, 32, 32)
    module.restore(x)
    assert isinstance(module.__dict__["_planned"][1], PlannedForward)
    assert all(p.is_contiguous() for p in module.net.parameters())  # the copy is channels-last, not the module
    assert not any("_planned" in k for k in module.state_dict())
    with forward_mode("plain"):
        module.restore(x)
        assert module.__dict__["_planned"][1] is module.net
    monkeypatch.setenv("CARBENCH_FORWARD", "plain")
    assert inference.plan_for("dncnn.compact") is PLAIN
    monkeypatch.setenv("CARBENCH_FORWARD", "fast")
    with pytest.raises(ValueError, match="CARBENCH_FORWARD='fast'"):
        inference.plan_for("dncnn.compact")


def test_a_traced_graph_follows_changed_weights():
    """A frozen graph holds the weights as constants: changing them in place must not serve the stale graph."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    fwd = PlannedForward(net, ForwardPlan("channels_last", True, None), "toy")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        fwd(x), fwd(x)
        assert len(fwd.graphs) == 1
        net[0].weight.mul_(2)
        out = fwd(x)
        fwd(x)  # the new weights' graph, traced on their second sight
        assert torch.allclose(out, net(x), atol=1e-6) and torch.allclose(fwd(x), net(x), atol=1e-6)


def test_a_graph_that_differs_is_refused_and_the_network_runs_eagerly(monkeypatch):
    class BranchOnValues(torch.nn.Module):  # a trace bakes the branch its example input took
        def forward(self, x):
            return x * 2 if float(x.mean()) > 0.5 else x - 1

    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda m, x, **k: real_trace(m, torch.ones_like(x), **k))
    fwd = PlannedForward(BranchOnValues().eval(), ForwardPlan("contiguous", True, None), "toy")
    lo, hi = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert torch.equal(fwd(lo), lo - 1)  # first sight of the shape: eager
    with pytest.warns(UserWarning, match="toy: traced forward differs from the eager one"):
        out = fwd(lo)  # second sight: traced (on the other branch), checked, refused
    assert torch.equal(out, lo - 1) and not fwd.jit_ok and not fwd.graphs
    assert torch.equal(fwd(hi), hi * 2) and torch.equal(fwd(lo), lo - 1)


def test_batch_chunks_join_tuples_and_tensors():
    class Two(torch.nn.Module):
        def forward(self, x):
            return x + 1, x.mean((1, 2, 3))

    fwd = PlannedForward(Two(), ForwardPlan("contiguous", False, 2), "toy")
    x = torch.rand(5, 1, 4, 4)
    a, b = fwd(x)
    assert torch.equal(a, x + 1) and torch.allclose(b, x.mean((1, 2, 3)))


def test_plans_file_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "plans.json"
    plan = ForwardPlan("channels_last", True, 4)
    inference.write_plans({"dncnn.compact": inference.plan_entry(plan, ms_per_image={"x": {"plain": 2.0}})},
                          {"threads": 1}, path)
    assert inference.load_plans(path) == {"dncnn.compact": plan}
    data = json.loads(path.read_text())
    assert data["context"] == {"threads": 1} and data["plans"]["dncnn.compact"]["ms_per_image"]["x"]["plain"] == 2.0
    with pytest.raises(ValueError, match="memory_format"):
        ForwardPlan("nhwc")
    with pytest.raises(ValueError, match="batch 0"):
        ForwardPlan("contiguous", False, 0)


def test_the_committed_plans_file_names_known_networks_only():
    from lightning_modules.registry import BUILTIN_PRESETS
    from lightning_modules.task_model_names import PACKAGED_DETECTORS, SHAPES_MODEL_TASKS

    plans = inference.load_plans()
    known = {f"{m}.{p}" for m, presets in BUILTIN_PRESETS.items() for p in presets}
    known |= set(SHAPES_MODEL_TASKS) | set(PACKAGED_DETECTORS) | {"efficientnet_lite0", "efficientnet_lite1",
                                                                  "efficientnet_lite2"}
    assert plans and set(plans) <= known
    assert planned(torch.nn.Identity(), "no-such-network") is not None


def test_settings_given_after_the_copy_reach_the_channels_last_copy(monkeypatch):
    """FBCNN's flexible QF and tiling's per-tile state are attributes of the module set between calls: the plan's
    channels-last copy must see them (else --qf-override and exact tiling would silently be ignored)."""
    module = create("fbcnn").eval()
    monkeypatch.setattr(inference, "_PLANS", {"fbcnn.compact": ForwardPlan("channels_last")})
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    module.restore(x)  # the copy exists now
    for qf in (10, 60):
        module.qf_override = qf
        with forward_mode("plain"):
            plain = module.restore(x)
        assert float((module.restore(x) - plain).abs().max()) <= 1e-5


def test_tiled_restoration_under_a_plan_equals_the_whole_image(monkeypatch):
    """FBCNN's tiles read the whole image's QF context from `_tile_state`: under a channels-last plan too."""
    from lightning_modules.restorers import tiling

    module = create("fbcnn").eval()
    monkeypatch.setattr(inference, "_PLANS", {"fbcnn.compact": ForwardPlan("channels_last", False, 4)})
    x = torch.rand(1, 3, 200, 232, generator=torch.Generator().manual_seed(2))
    with forward_mode("plain"):
        whole = module.restore(x)
    module.restore(x)  # the plan's copy is made before tiling sets the context
    tiled = tiling.restore_tiled(module, x, 160)
    assert float((tiled - whole).abs().max()) <= 1e-4


def test_a_plan_made_inside_inference_mode_keeps_gradients_working(monkeypatch):
    """Lightning's test loop runs in inference_mode; dual priors takes gradients inside its forward, so the plan's
    channels-last copy must not be made of inference tensors."""
    module = create("dualpriors").eval()
    monkeypatch.setattr(inference, "_PLANS", {"dualpriors.compact": ForwardPlan("channels_last", False, 4)})
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    with forward_mode("plain"), torch.inference_mode():
        plain = module.restore(x)
    with torch.inference_mode():
        out = module.restore(x)
    assert float((out - plain).abs().max()) <= 1e-5
