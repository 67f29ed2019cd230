"""`benchmark check --suite headline`: it re-measures every row the README's headline tables cite (or the committed
subset row beside it), and it fails on a perturbed headline value."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli.common import SUITE, SUITE_ALIASES, _csv
from tests.test_readme_numbers import _table, method_and_preset  # the README tables, parsed as that test reads them

ROOT = Path(__file__).resolve().parents[1]


def _runs(suite: str) -> list[tuple[set[str], set[str]]]:
    """(methods, datasets) of each run of a suite; a fidelity run scores `jpeg` beside its methods."""
    out = []
    for argv, _ in SUITE[suite]:
        methods = set(_csv(argv[argv.index("--method") + 1]))
        if "--task" not in argv:
            methods.add("jpeg")
        datasets = set(_csv(argv[argv.index("--dataset") + 1])) if "--dataset" in argv else {"imagenet-sample1000"}
        out.append((methods, datasets))
    return out


def _covered(suite: str, method: str, dataset: str) -> bool:
    from lightning_modules.registry import split_name

    base, preset = split_name(method)
    for methods, datasets in _runs(suite):
        names = {split_name(m) for m in methods}
        if dataset in datasets and ((base, preset) in names or (preset is None and any(b == base for b, _ in names))
                                    or (base, None) in names and _is_default(base, preset)):
            return True
    return False


def _is_default(base: str, preset: str | None) -> bool:
    from lightning_modules.registry import get_entry

    return preset is None or base == "jpeg" or get_entry(base).default_preset == preset


def test_the_headline_alias_names_the_headline_suites():
    assert SUITE_ALIASES["headline"] == [s for s in SUITE if s.startswith("headline-")]


def test_every_measured_row_of_the_readme_fidelity_table_is_re_measured():
    datasets = ["live1", "live1-gray", "classic5"]
    cited = []
    for cells in _table("| method | source | LIVE1 (RGB) |"):
        if cells[1] != "measured":
            continue
        method = cells[0].split(" (")[0]
        for dataset, cell in zip(datasets, cells[2:5]):
            if cell:
                cited.append((method, dataset))
                assert _covered("headline-fidelity", method, dataset), (method, dataset)
    assert len(cited) >= 15  # the table's measured cells (jpeg x 3, six compact, the paper-weight rows)


def test_every_row_of_the_readme_task_tables_has_its_subset_row_re_measured():
    names = {"direct (no restoration)": "jpeg", "direct (JPEG)": "jpeg", "urie (authors')": "urie"}
    classification = [names.get(c[0]) or ".".join(filter(None, method_and_preset(c[0])))
                      for c in _table("| method (preset) | clean |")]
    detection = [names.get(c[0], c[0]) for c in _table("| method | Q25 | Q18 | Q15 | Q10 | Q7 |")]
    assert len(classification) >= 10 and len(detection) >= 8
    for suite, methods in (("headline-classification", classification), ("headline-detection", detection)):
        for m in methods:
            assert _covered(suite, m, "imagenet-sample1000"), (suite, m)
        argv = SUITE[suite][0][0]
        assert argv[argv.index("--qf") + 1] == "10" and "--n-images" in argv  # the subset row beside the Q10 column


def _committed_subset_rows(board: str, suite: str) -> pd.DataFrame:
    from benchmark.boards import leaderboard

    argv = SUITE[suite][0][0]
    df = leaderboard.read(ROOT / "leaderboards" / f"{board}.csv", board)
    n = argv[argv.index("--n-images") + 1]
    return df[(df.dataset == f"imagenet-sample1000[:{n}]") & (df.model == argv[argv.index("--task-model") + 1])
              & (df.source == "measured")]


@pytest.mark.parametrize("board,suite", [("classification", "headline-classification"),
                                         ("detection", "headline-detection")])
def test_the_subset_rows_the_gate_compares_with_are_committed_with_their_command(board, suite):
    """The gate's subset rows exist on the committed board, one per method at QF 10 (and the clean reference), each
    with the command and a pinned commit that re-make it."""
    import subprocess

    rows = _committed_subset_rows(board, suite)
    argv = SUITE[suite][0][0]
    for m in _csv(argv[argv.index("--method") + 1]):
        method, _, preset = ("direct" if m == "jpeg" else m).partition(".")
        got = rows[(rows.method == method) & (rows.qf == "10") & (rows.codec == "jpeg")
                   & ((rows.preset == preset) if preset else True)]
        assert len(got) >= 1, (board, method)
        for r in got.itertuples():
            assert r.command.startswith("benchmark run ") and "--n-images" in r.command, (method, r.command)
            assert re.fullmatch(r"[0-9a-f]{12}", r.git_commit), (method, r.git_commit)
            assert subprocess.run(["git", "cat-file", "-e", f"{r.git_commit}^{{commit}}"], cwd=ROOT).returncode == 0
    assert len(rows[(rows.method == "clean")]) >= 1


@pytest.mark.slow  # re-scores jpeg on LIVE1, LIVE1-gray and Classic5 twice (~1 min)
def test_headline_gate_passes_untouched_and_fails_on_a_perturbed_headline_value(tmp_path):
    from benchmark.boards.check import format_findings
    from benchmark.cli.check import run_check
    from datamodules.sources import default_data_root

    if default_data_root() is None:
        pytest.skip("no test sets beside the checkout ($CARBENCH_DATA or ../shared/data/test)")
    boards = tmp_path / "boards"
    boards.mkdir()
    shutil.copy(ROOT / "leaderboards" / "fidelity.csv", boards / "fidelity.csv")
    rc, findings = run_check(["headline-fidelity"], boards, methods="jpeg")
    assert rc == 0, format_findings(findings)
    psnr = {f.row for f in findings if f.metric == "psnr"}
    assert len(psnr) == 3  # jpeg at QF 10 on LIVE1, LIVE1-gray, Classic5: the README table's jpeg row

    df = pd.read_csv(boards / "fidelity.csv", dtype=str, keep_default_na=False)
    hit = ((df.method == "jpeg") & (df.dataset == "live1") & (df.channels == "rgb") & (df.qf == "10")
           & (df.passes == "1") & (df.codec == "jpeg") & (df.source == "measured"))
    assert hit.sum() == 1
    df.loc[hit, "psnr"] = f"{float(df.loc[hit, 'psnr'].iloc[0]) + 0.05:.4f}"
    df.to_csv(boards / "fidelity.csv", index=False)
    rc, findings = run_check(["headline-fidelity"], boards, methods="jpeg")
    failed = [f for f in findings if f.failed]
    assert rc == 1 and len(failed) == 1, format_findings(findings)
    assert failed[0].metric == "psnr" and "dataset=live1 " in failed[0].row + " "
