"""`benchmark check`: the regression gate passes on untouched boards and fails, naming the row, on a perturbed one."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from benchmark.boards import leaderboard
from benchmark.boards.check import compare, format_findings, load_tolerances
from benchmark.cli.check import run_check


def _row(**kw):
    base = {"method": "m", "preset": "p", "dataset": "samples", "channels": "rgb", "codec": "jpeg", "qf": "10",
            "passes": "1", "subsampling": "420", "seed": "0", "source": "measured", "n_images": "6", "psnr": "27.1234",
            "ssim": "0.7000", "psnrb": "26.0000", "bpp": "0.3000"}
    return {**base, **kw}


def test_compare_by_hand(tmp_path):
    committed, measured = tmp_path / "c.csv", tmp_path / "m.csv"
    leaderboard.upsert(committed, [_row(), _row(qf="20"), _row(qf="30")])
    leaderboard.upsert(measured, [_row(psnr="27.1300"), _row(qf="20", psnr="27.1400"), _row(qf="30", n_images="5"),
                                  _row(qf="40")])
    tol = {"psnr": 0.01, "ssim": 0.0005, "psnrb": 0.01, "bpp": 0.0005}
    findings = {(f.row.split("qf=")[1].split()[0], f.metric): f.verdict for f in compare("fidelity", committed, measured, tol)}
    assert findings[("10", "psnr")] == "ok"  # +0.0066 dB, within 0.01
    assert findings[("20", "psnr")] == "REGRESSION"  # +0.0166 dB
    assert findings[("30", "n_images")] == "REGRESSION"  # a lost image is never within tolerance
    assert findings[("40", "*")] == "NOT COMMITTED"


def test_tolerance_file_is_validated(tmp_path):
    assert load_tolerances()["fidelity"]["psnr"] == 0.01
    bad = tmp_path / "tol.yaml"
    bad.write_text("fidelity:\n  psnr: -1\n")
    with pytest.raises(ValueError, match="fidelity.psnr"):
        load_tolerances(bad)


@pytest.mark.slow  # re-runs the embedded fidelity suite twice
def test_gate_on_the_real_suite_passes_untouched_and_fails_perturbed(tmp_path, capsys):
    boards = tmp_path / "boards"
    boards.mkdir()
    shutil.copy(leaderboard.default_path("fidelity"), boards / "fidelity.csv")
    leaderboard.add_weights_hashes(boards / "fidelity.csv", "fidelity")  # a no-op once the committed board has them
    rc, findings = run_check(["fidelity"], boards, methods="dncnn")
    assert rc == 0, format_findings(findings)
    assert sum(f.metric == "psnr" for f in findings) == 4  # jpeg and dncnn at QF 10 and 20 on `samples`

    df = pd.read_csv(boards / "fidelity.csv", dtype=str, keep_default_na=False)
    hit = (df.method == "dncnn") & (df.preset == "compact") & (df.dataset == "samples") & (df.qf == "10")
    assert hit.sum() == 1
    df.loc[hit, "psnr"] = f"{float(df.loc[hit, 'psnr'].iloc[0]) + 0.05:.4f}"
    df.to_csv(boards / "fidelity.csv", index=False)
    rc, findings = run_check(["fidelity"], boards, methods="dncnn")
    failed = [f for f in findings if f.failed]
    assert rc == 1 and len(failed) == 1
    assert failed[0].metric == "psnr" and "method=dncnn" in failed[0].row and "qf=10" in failed[0].row
    assert "REGRESSION" in format_findings(findings)


def test_migrated_board_records_the_weights_file_and_the_gate_passes(tmp_path):
    """`benchmark migrate-boards` fills weights_sha256 of committed measured rows from the files they name, and the
    re-run rows (which hash the file they load) then match the committed ones key for key."""
    import hashlib

    from benchmark.cli import main
    from lightning_modules.registry import CHECKPOINT_DIR

    boards = tmp_path / "boards"
    boards.mkdir()
    shutil.copy(leaderboard.default_path("fidelity"), boards / "fidelity.csv")
    before = pd.read_csv(boards / "fidelity.csv", dtype=str, keep_default_na=False)
    assert main(["migrate-boards", "--leaderboard", str(boards)]) == 0
    df = pd.read_csv(boards / "fidelity.csv", dtype=str, keep_default_na=False)
    digest = hashlib.sha256((CHECKPOINT_DIR / "dncnn_compact.pt").read_bytes()).hexdigest()[:12]
    compact = (df.method == "dncnn") & (df.preset == "compact") & (df.source == "measured")
    assert compact.sum() >= 2 and set(df.weights_sha256[compact]) == {digest}
    assert set(df.weights_sha256[(df.method == "jpeg") | (df.source == "paper")]) == {""}
    assert len(df) == len(before)
    # nothing else changed (the committed board may already be migrated; columns newer than it are added empty)
    for column in df.columns:
        if column == "weights_sha256":
            continue
        if column in before.columns:
            assert df[column].equals(before[column]), column
        else:
            assert set(df[column]) == {""}, column
    assert main(["migrate-boards", "--leaderboard", str(boards)]) == 0  # idempotent
    assert pd.read_csv(boards / "fidelity.csv", dtype=str, keep_default_na=False).equals(df)
    rc, findings = run_check(["fidelity"], boards, methods="dncnn")
    assert rc == 0, format_findings(findings)
    assert sum(f.metric == "psnr" for f in findings) == 4


def test_a_row_from_another_weights_file_is_not_the_committed_row(tmp_path):
    committed, measured = tmp_path / "c.csv", tmp_path / "m.csv"
    leaderboard.upsert(committed, [_row(weights="x.pt", weights_sha256="aaaaaaaaaaaa"), _row(qf="20", weights="x.pt")])
    leaderboard.upsert(measured, [_row(weights="x.pt", weights_sha256="bbbbbbbbbbbb"),
                                  _row(qf="20", weights="x.pt", weights_sha256="cccccccccccc")])
    found = {f.row.split("qf=")[1].split()[0]: f for f in compare("fidelity", committed, measured, {})}
    assert found["10"].verdict == "NOT COMMITTED" and "committed aaaaaaaaaaaa" in found["10"].measured
    assert found["20"].verdict == "NOT COMMITTED" and "migrate-boards" in found["20"].measured


def test_migration_merges_an_old_row_with_its_hashed_remeasurement(tmp_path):
    """A board holding an old row (no hash) and a newer re-measurement of it with the same file: one row after
    migration, the newer; the same pair with different values is refused, the file left as it was."""
    from lightning_modules.registry import CHECKPOINT_DIR

    weights = str(CHECKPOINT_DIR / "dncnn_compact.pt")
    digest = leaderboard.weights_sha256(weights)
    board = tmp_path / "fidelity.csv"
    leaderboard.upsert(board, [_row(weights=weights, created_at="2026-01-01T00:00:00+00:00")])
    leaderboard.upsert(board, [_row(weights=weights, weights_sha256=digest, created_at="2026-02-01T00:00:00+00:00")])
    assert len(leaderboard.read(board, "fidelity")) == 2
    leaderboard.add_weights_hashes(board, "fidelity")
    df = leaderboard.read(board, "fidelity")
    assert len(df) == 1 and df.weights_sha256.iloc[0] == digest and df.created_at.iloc[0].startswith("2026-02")

    board2 = tmp_path / "b2" / "fidelity.csv"
    leaderboard.upsert(board2, [_row(weights=weights)])
    leaderboard.upsert(board2, [_row(weights=weights, weights_sha256=digest, psnr="27.9999")])
    before = board2.read_bytes()
    with pytest.raises(leaderboard.LeaderboardError, match="different values"):
        leaderboard.add_weights_hashes(board2, "fidelity")
    assert board2.read_bytes() == before
