"""Usage errors are answered before the heavy imports: exit status 2, `error: --flag 'value': ...`, and neither torch
nor Lightning imported (checked on the modules a fresh process loaded, not on a wall clock)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "torchvision", "timm", "pyiqa", "pandas")


@pytest.mark.parametrize("args,msg", [
    (["run", "--qf", "0"], "error: --qf '0': quality factor 0 is outside 1..100"),
    (["run", "--qf", "10,30>101"], "error: --qf '10,30>101': quality factor 101 is outside 1..100"),
    (["run", "--passes", "9"], "error: --passes '9': passes=9 is outside 1..5"),
    (["run", "--method", "nosuch"], "error: --method 'nosuch': unknown method 'nosuch'; available: afd, arcnn"),
    (["run", "--method", "dncnn.nosuch"], "error: --method 'dncnn.nosuch': method 'dncnn' has no preset 'nosuch'"),
    (["run", "--method", "jpeg,dncnn", "--preset", "nosuch"], "error: --method 'jpeg': method 'jpeg' has no preset"),
    (["run", "--method", "nosuch.py:Net"], "error: --method 'nosuch.py:Net': method 'nosuch.py:Net': file nosuch.py "
                                           "does not exist"),
    (["run", "--dataset", "nosuch"], "error: --dataset 'nosuch': unknown dataset 'nosuch': use one of samples"),
    (["run", "--dataset", "samples:x"], "error: --dataset 'samples:x': dataset 'samples:x': unknown variant 'x'"),
    (["run", "--task", "classification", "--n-images", "0"], "error: --n-images 0: must be a positive integer"),
    (["run", "--task", "classification", "--batch-size", "0"], "error: --batch-size 0: must be a positive integer"),
    (["run", "--task", "classification", "--tile", "-5"], "error: --tile -5: must be a positive integer"),
    (["run", "--task", "classify"], "error: --task 'classify': unknown task(s) ['classify']"),
    (["run", "--task", "detection", "--dataset", "nosuch"], "error: --dataset 'nosuch': use `shapes` or KIND:PATH"),
    (["run", "--task", "detection", "--dataset", "coco:/no/such/dir"],
     "error: --dataset 'coco:/no/such/dir': folder /no/such/dir does not exist"),
    (["run", "--task", "segmentation", "--dataset", "coco:/tmp"], "error: --dataset 'coco:/tmp' is a detection set, "
                                                                  "not segmentation"),
    (["run", "--task", "detection", "--task-model", "nosuch"],
     "error: --task-model 'nosuch': unknown detection model 'nosuch': use one of ['shapes-frcnn', 'centernet_mbv3'"),
    (["run", "--task", "detection", "--task-model", "shapes-cnn"],
     "error: --task-model 'shapes-cnn': task model 'shapes-cnn' is a classification model, not detection"),
    (["run", "--task", "classification", "--qf-override", "30"], "error: --qf-override applies to fidelity runs"),
    (["compare", "--method", "nosuch"], "error: --method 'nosuch': unknown method 'nosuch'"),
    (["compare", "--method", "dncnn", "--qf", "200"], "error: --qf '200': quality factor 200 is outside 1..100"),
    (["train", "--steps", "0"], "error: --steps 0: must be a positive integer"),
    (["train", "--method", "dncnn", "--preset", "nosuch"], "error: --method 'dncnn': method 'dncnn' has no preset"),
    (["train", "--task", "detection", "--model", "shapes-cnn"], "error: --model 'shapes-cnn': no trainable "
                                                                "'detection' model 'shapes-cnn'"),
    (["check", "--suite", "nosuch"], "error: --suite 'nosuch': unknown check suite(s) ['nosuch']"),
    (["efficiency", "--method", "nosuch*"], "error: --method 'nosuch*': no method matches 'nosuch*'"),
    (["efficiency", "--size", "0"], "error: --size 0: must be a positive integer"),
    (["bench", "--repeat", "0"], "error: --repeat 0: must be a positive integer"),
    (["bdrate", "--boards", "/no/such/dir"], "error: --boards /no/such/dir: folder does not exist"),
])
def test_usage_errors_exit_2_and_name_the_flag_and_value(args, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: no board, no results folder
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(msg) and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_wnids_file_must_list_the_classifiers_1000_classes(tmp_path, capsys):
    two = tmp_path / "two.txt"
    two.write_text("n01440764 tench\nn01443537 goldfish\n")
    assert main(["run", "--task", "classification", "--wnids", str(two)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --wnids {two}: lists 2 wnids; the classifier has 1000 classes")
    bad = tmp_path / "bad.txt"
    bad.write_text("tench\n")
    assert main(["run", "--task", "classification", "--wnids", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --wnids {bad}: not ImageNet wnids (nXXXXXXXX): ['tench']")
    assert main(["run", "--task", "classification", "--wnids", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_dataset_list_with_one_usable_item_is_not_a_usage_error():
    """`samples,nosuchset` fails only the bad dataset's jobs at run time (test_cli); the check lets it through."""
    from benchmark.cli.usage import fidelity_datasets

    fidelity_datasets("samples,nosuchset", None)


def test_the_name_tables_match_what_the_families_register():
    from lightning_modules.registry import _REGISTRY, BUILTIN_PRESETS, _load_plugins
    from lightning_modules.task_models import SHAPES_TASK_MODELS
    from lightning_modules.task_model_names import SHAPES_MODEL_TASKS

    _load_plugins()
    registered = {n: tuple(e.presets) for n, e in _REGISTRY.items() if e.module_cls is None
                  or e.module_cls.__module__.startswith("lightning_modules.")}
    assert {n: p for n, p in registered.items() if n in BUILTIN_PRESETS} == BUILTIN_PRESETS
    assert set(BUILTIN_PRESETS) <= set(registered)
    assert {n: s.task for n, s in SHAPES_TASK_MODELS.items()} == SHAPES_MODEL_TASKS


@pytest.mark.parametrize("args", [
    ["run", "--qf", "0"], ["run", "--method", "nosuch"], ["run", "--dataset", "nosuch"],
    ["run", "--task", "classification", "--n-images", "0"], ["run", "--task", "detection", "--task-model", "nosuch"],
    ["train", "--steps", "0"], ["check", "--suite", "nosuch"], ["efficiency", "--method", "nosuch"],
])
def test_usage_errors_import_neither_torch_nor_lightning(args):
    """A fresh process: `benchmark.cli.main` answers, then the modules it loaded are listed."""
    probe = ("import json, sys\nfrom benchmark.cli import main\nrc = main(sys.argv[1:])\n"
             f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    rc, heavy = json.loads(out.stdout.splitlines()[-1])
    assert rc == 2 and out.stderr.startswith("error: "), out.stderr
    assert heavy == [], f"{' '.join(args)} imported {heavy}"


def test_python_m_benchmark_cli_exits_2_without_torch():
    """`python -m benchmark.cli run --qf 0`, as a user types it: -X importtime lists every module imported."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmark.cli", "run", "--qf", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "datamodules.corruptions" in imported  # the probe sees the project's imports
    assert not imported & {"torch", "lightning", "torchvision", "timm", "pandas"}
    assert "error: --qf '0': quality factor 0 is outside 1..100" in out.stderr
