"""Efficiency rows (params, FLOPs, latency), the papers' reference rows, and training recipes (YAML, stages)."""
from __future__ import annotations

import pytest
import torch

from benchmark.evaluate.efficiency import count_flops, format_table, measure, paper_rows, write
from benchmark.cli.train import _stage_plan, load_config, train
from lightning_modules import create
from tests.conftest import need_shared


def test_flops_of_a_conv_by_hand():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    # one multiply-add (2 FLOPs) per output pixel, output channel and kernel tap; bias adds are not counted
    assert count_flops(conv, torch.rand(1, 3, 16, 16)) == 2 * 16 * 16 * 8 * 3 * 3 * 3


def test_measure_row_matches_the_network(tmp_path):
    row = measure("dncnn.compact", size=32, repeat=1)
    net = create("dncnn.compact", pretrained=False).net
    assert row["params_m"] * 1e6 == pytest.approx(sum(p.numel() for p in net.parameters()))
    # DnCNN is all 3x3 'same' convs: sum over layers of 2 * H * W * Cout * Cin * 9
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    expected = sum(2 * 32 * 32 * m.out_channels * m.in_channels * 9 for m in convs)
    assert row["gflops"] * 1e9 == pytest.approx(expected) and row["gmacs"] == pytest.approx(row["gflops"] / 2)
    assert row["latency_ms"] > 0 and row["source"] == "measured"
    path = tmp_path / "eff.csv"
    write([row], path)
    write([row], path)  # upsert: same key, one row
    assert path.read_text().count("dncnn,compact") == 1


def test_train_and_deploy_forms_of_a_reparameterisable_net(monkeypatch):
    from benchmark.evaluate.efficiency import forms
    from lightning_modules import registry
    from lightning_modules.registry import Preset, register

    class RepBlock(torch.nn.Module):
        """3x3 + 1x1 branches at training time; one 3x3 after `reparameterize()` (RepVGG's idea)."""

        def __init__(self):
            super().__init__()
            self.k3, self.k1, self.fused = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 1), None

        def reparameterize(self):
            self.fused = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.fused.weight.data = self.k3.weight.data + torch.nn.functional.pad(self.k1.weight.data, (1, 1, 1, 1))
            self.fused.bias.data = self.k3.bias.data + self.k1.bias.data
            del self.k3, self.k1

        def forward(self, x):
            return self.fused(x) if self.fused is not None else self.k3(x) + self.k1(x)

    class RepNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = RepBlock()

        def forward(self, x):
            return x + self.block(x)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register("repnet", presets={"none": Preset(self_contained=True)})(RepNet)
    assert forms("repnet") == ["train", "deploy"] and forms("dncnn.compact") == ["deploy"]
    train, deploy = measure("repnet", size=16, repeat=1, form="train"), measure("repnet", size=16, repeat=1)
    assert train["params_m"] * 1e6 == 3 * 3 * 9 + 3 + 3 * 3 + 3 and deploy["params_m"] * 1e6 == 3 * 3 * 9 + 3
    # 2 FLOPs per multiply-add: the 1x1 branch's 16*16*3*3 MACs disappear in the deploy form
    assert train["gflops"] * 1e9 - deploy["gflops"] * 1e9 == pytest.approx(2 * 16 * 16 * 3 * 3)


@need_shared("published", "efficiency.csv")
def test_paper_rows_carry_table_III():
    rows = {r["method"]: r for r in paper_rows(["dagn"])}
    assert rows["dagn"]["params_m"] == "109.9" and rows["dagn"]["gmacs"] == "952.8"
    assert all(r["source"] == "paper" for r in rows.values())


def test_table_keeps_its_columns_where_a_paper_row_has_no_latency():
    measured = {"method": "dncnn", "preset": "compact", "form": "deploy", "source": "measured", "params_m": 0.5,
                "gmacs": 9.0, "latency_ms": 12.0, "device": "cpu"}
    paper = dict(measured, source="paper", gmacs="", latency_ms="")
    _, a, b = format_table([measured, paper]).splitlines()
    assert len(a) == len(b) and a.index("cpu") == b.index("cpu")
    assert b.split()[-3:] == ["-", "-", "cpu"]


@need_shared("published", "fidelity.csv")
def test_paper_fidelity_rows_pivot_the_metrics():
    from benchmark.boards.published import paper_fidelity_rows

    rows = paper_fidelity_rows("dagn")
    live1 = [r for r in rows if (r["method"], r["dataset"], r["qf"]) == ("dagn", "live1", "10")]
    assert len(live1) == 1 and (live1[0]["psnr"], live1[0]["ssim"], live1[0]["psnrb"]) == ("27.95", "0.807", "27.70")
    assert {r["source"] for r in rows} == {"paper"}


def test_recipes_parse_and_stage_plans():
    cfg = load_config("dagn_paper.yaml")
    assert cfg["preset"] == "paper" and cfg["qf_range"] == [10, 95] and cfg["crop"] == 96
    module = create("dagn", pretrained=False)
    plan = _stage_plan(module, {**cfg, "qf_range": (10, 95)}, None)
    assert [p[0] for p in plan] == ["autoencoders", "restorer"]
    assert plan[0][1:4] == (1665, 32, 256) and plan[1][1:4] == (555000, 64, 96)
    assert [p[0] for p in _stage_plan(module, cfg, ["restorer"])] == ["restorer"]
    with pytest.raises(ValueError, match="unknown stage"):
        _stage_plan(module, cfg, ["finetune"])
    with pytest.raises(ValueError, match="one stage"):
        _stage_plan(create("dncnn", pretrained=False), cfg, ["restorer"])


def test_recipe_with_unknown_key_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: dncnn\nsteps: 5\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        train(config=str(bad))


def test_jarcal_recipe_draws_the_paper_qf_set_in_both_stages():
    import lightning_modules.restorers.jarcal  # noqa: F401  (registers)

    cfg = load_config("jarcal_paper.yaml")
    module = create("jarcal.paper", pretrained=False)
    plan = _stage_plan(module, {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}, None)
    assert [p[0] for p in plan] == ["encoder", "restorer"]
    seen = tuple(range(10, 100, 10))
    assert plan[0][1:4] == (27500, 8, 256) and plan[0][6] == seen
    assert plan[1][1:4] == (82500, 8, 256) and plan[1][6] == seen


def test_a_submodule_named_fuse_is_not_a_reparameterisation_hook():
    from benchmark.evaluate.efficiency import reparameterizable

    class WithFuseModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fuse = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1))

    class WithFuseMethod(torch.nn.Module):
        def fuse(self):
            return self

    assert not reparameterizable(WithFuseModule())
    assert reparameterizable(torch.nn.Sequential(WithFuseMethod()))
