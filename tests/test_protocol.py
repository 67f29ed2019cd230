"""The acceptance check: carbench reproduces the published JPEG-only rows and the official DnCNN-3 numbers.

Reads ../shared (real data, published CSVs, the authors' weights); skipped with a reason where it is absent.
Tolerances (issue 2): +-0.05 dB PSNR, +-0.002 SSIM, +-0.10 dB PSNR-B; DnCNN-3 +-0.01 dB.
"""
import pandas as pd
import pytest

from benchmark.boards.published import PUBLISHED_DATASET
from benchmark.evaluate.fidelity import FidelityRequest, run_fidelity
from datamodules.corruptions import Corruption

from .conftest import PUBLISHED, TEST_DATA, WEIGHTS, need_shared

pytestmark = [pytest.mark.slow, need_shared("data", "test"), need_shared("published", "fidelity.csv")]
TOL = {"psnr": 0.05, "ssim": 0.002, "psnrb": 0.10}

# carbench dataset -> (published dataset, channels, QFs): the rows issue 2 names, plus BSDS500's Y tables
PROTOCOL = {
    "live1": [10, 20, 30, 40],
    "live1-gray": [10, 20, 30, 40, 15, 25, 35, 45],
    "classic5": [10, 20, 30, 40, 15, 25, 35, 45],
    "bsds500": [10, 20, 30, 40],
    "bsds500:y": [10, 20, 30, 40, 15, 25, 35, 45],
}


def published_jpeg_rows():
    df = pd.read_csv(PUBLISHED / "fidelity.csv", dtype=str)
    df = df[(df.method == "jpeg") & (df.codec == "jpeg") & df.paper.isin(["jarcal", "dagn"])
            & df.table.isin(["1", "3", "4", "I"])]
    cases = []
    for ours, qfs in PROTOCOL.items():
        pub_ds, pub_ch = PUBLISHED_DATASET[(ours, "rgb" if ours in ("live1", "bsds500") else "gray")]
        sel = df[(df.dataset == pub_ds) & (df.channels == pub_ch) & df.qf.isin([str(q) for q in qfs])]
        for _, r in sel.iterrows():
            cases.append((ours, int(r.qf), r.metric, float(r.value), f"{r.paper} {r.table}"))
    return cases


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    rows = {}
    for dataset, qfs in PROTOCOL.items():
        req = FidelityRequest(methods=["jpeg"], corruptions=[Corruption("jpeg", (q,)) for q in qfs],
                              datasets=[dataset], data_root=str(TEST_DATA), progress=False,
                              cache_dir=str(tmp_path_factory.mktemp("cache")))
        out, failures = run_fidelity(req)
        assert not failures, failures
        rows.update({(r["dataset"], int(r["qf"])): r for r in out})
    return rows


CASES = published_jpeg_rows() if (PUBLISHED / "fidelity.csv").exists() else []


def test_every_named_table_is_covered():
    if not CASES:
        pytest.skip("published CSV absent")
    tables = {c[4] for c in CASES}
    assert {"jarcal 1", "jarcal 3", "jarcal 4", "dagn I"} <= tables
    assert len(CASES) >= 100


@pytest.mark.parametrize("dataset,qf,metric,paper,table", CASES,
                         ids=[f"{c[0]}-q{c[1]}-{c[2]}-{c[4].replace(' ', '')}" for c in CASES])
def test_jpeg_row_matches_published(measured, dataset, qf, metric, paper, table):
    got = measured[(dataset, qf)][metric]
    assert abs(got - paper) <= TOL[metric] + 1e-9, f"{dataset} QF{qf} {metric}: measured {got:.4f}, {table} {paper}"


# the authors' published PSNR (../shared/weights/README.md)
DNCNN3 = {("classic5", 10): 29.40, ("classic5", 20): 31.63, ("classic5", 30): 32.91, ("classic5", 40): 33.77,
          ("live1-gray", 10): 29.19}


@need_shared("weights", "dncnn3_matconvnet", "DnCNN3.mat")
def test_official_dncnn3_reproduces_published_psnr(tmp_path):
    got = {}
    for dataset in ("classic5", "live1-gray"):
        qfs = sorted(q for d, q in DNCNN3 if d == dataset)
        req = FidelityRequest(methods=["dncnn.paper"], corruptions=[Corruption("jpeg", (q,)) for q in qfs],
                              datasets=[dataset], data_root=str(TEST_DATA), progress=False, add_reference=False,
                              weights=str(WEIGHTS / "dncnn3_matconvnet" / "DnCNN3.mat"), cache_dir=str(tmp_path))
        rows, failures = run_fidelity(req)
        assert not failures, failures
        got.update({(r["dataset"], int(r["qf"])): r for r in rows})
    for k, paper in DNCNN3.items():
        assert abs(got[k]["psnr"] - paper) <= 0.01 + 1e-9, f"{k}: measured {got[k]['psnr']:.3f}, published {paper}"
    # the same rows in jarcal Table 1 (Y) also print SSIM and PSNR-B for DnCNN: those match too
    df = pd.read_csv(PUBLISHED / "fidelity.csv", dtype=str)
    df = df[(df.paper == "jarcal") & (df.table == "1") & (df.method == "dncnn")]
    checked = 0
    for (dataset, qf), row in got.items():
        pub_ds = PUBLISHED_DATASET[(dataset, "gray")][0]
        for metric in ("ssim", "psnrb"):
            sel = df[(df.dataset == pub_ds) & (df.qf == str(qf)) & (df.metric == metric)]
            for v in sel.value.astype(float):
                assert abs(row[metric] - v) <= TOL[metric] + 1e-9, f"{dataset} QF{qf} {metric}: {row[metric]} vs {v}"
                checked += 1
    assert checked == 2 * len(DNCNN3)
