"""Leaderboard CSVs: a fixed schema per board, upserts that are atomic (write-then-rename) and serialized with a
file lock, so concurrent runs never lose rows and an interrupted write never leaves a half file."""
from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from filelock import FileLock

# where boards go: a light module, so that `benchmark.cli.usage` checks the target before the heavy imports
from benchmark.boards.targets import RESULTS_ENV, fidelity_target, user_results_dir  # noqa: F401

# weights_sha256: the first 12 hex digits of the sha256 of the weights file that produced a measured row ("" for
# methods without a file, `jpeg` and source=paper rows); part of the key, so two different files of one name never
# share a row. Boards written before it existed read it as "" (`benchmark migrate-boards` fills it in).
FIDELITY_KEY = ["method", "preset", "dataset", "channels", "codec", "qf", "passes", "subsampling", "seed", "source",
                "weights_sha256"]
FIDELITY_COLUMNS = FIDELITY_KEY[:-2] + [
    "n_images", "n_skipped", "n_gray", "psnr", "ssim", "psnrb", "lpips", "fid", "kid", "bpp", "delta", "delta_lo",
    "delta_hi", "source", "weights",
    "weights_sha256", "codec_lib", "carbench_version", "git_commit", "created_at", "command"]
# model_weights_sha256: the same digest of the task model's weights file where the user gave it (--task-weights; a
# TF.js graph: its .bin), "" for the default weights (shipped, packaged, or pinned and checked at load); part of the
# key, so rows of two files never replace each other. Boards written before it read it as "" (their rows keep
# their keys and their per-image files: benchmark.boards.per_image leaves an empty one out of the digest).
TASK_KEY = ["task", "model", "method", "preset", "dataset", "codec", "qf", "passes", "subsampling", "seed", "metric",
            "source", "weights_sha256", "model_weights_sha256"]
TASK_COLUMNS = TASK_KEY[:-4] + ["metric", "value", "delta", "delta_lo", "delta_hi", "n_images", "source",
                                "model_weights", "model_weights_sha256", "weights", "weights_sha256", "protocol",
                                "codec_lib", "carbench_version", "git_commit", "created_at", "command"]
# n_gray: gray images of a mixed folder scored inside a colour (rgb / y) row, on their one channel ("": not recorded)
# lpips: mean per-image LPIPS (AlexNet), measured only on request (`--metrics ...,lpips`; "": not measured)
# fid, kid: set-level FID / KID of the restored vs the clean images (local Inception file), on request likewise
# delta, delta_lo, delta_hi: the headline metric minus the reference row's (fidelity: psnr vs jpeg; tasks: the
# row's value vs direct / clean) and its paired 95 % bootstrap interval over the per-image files
# (benchmark.boards.per_image); "": a reference row, or no per-image file to pair with
# git_commit: the commit the row was measured at; `<commit>-dirty+<diff digest>` from a modified tree (which the
# committed boards refuse: benchmark.boards.provenance); command: the exact command that measured the row
# columns newer than some committed boards -> the column they follow (the first of a tuple the file has): a file
# without them reads them as ""
ADDED_COLUMNS = {"weights_sha256": "weights", "n_gray": "n_skipped", "lpips": "psnrb", "fid": "lpips", "kid": "fid",
                 "delta": ("bpp", "value"), "delta_lo": "delta", "delta_hi": "delta_lo",
                 "command": "created_at", "model_weights_sha256": "model_weights", "protocol": "weights_sha256"}
# protocol: how the row's weights file was trained, in one line (benchmark.evaluate.training_protocol: training
# images, labels, crop, steps x batch, lr schedule, QF set, clean share, loss); "" for methods without a file.
# Not part of the key (weights_sha256 already names the file). Added columns that belong to one kind of board: the
# column the file must have for it to get them (fidelity boards also have weights_sha256, and no protocol)
ADDED_ONLY_WITH = {"protocol": "model_weights"}
DELTA_COLUMNS = ("delta", "delta_lo", "delta_hi")
LEADERBOARD_DIR = Path(__file__).resolve().parents[2] / "leaderboards"
SOURCES = ("measured", "paper")


class LeaderboardError(ValueError):
    """A row or file that does not fit its board's schema; the message names the file, row and column."""


# the efficiency board: parameters, FLOPs, latency per (method, preset, form, input, device)
EFFICIENCY_KEY = ["method", "preset", "form", "input", "device", "source"]
EFFICIENCY_COLUMNS = EFFICIENCY_KEY[:-1] + ["params_m", "gflops", "gmacs", "latency_ms", "threads", "gpu_latency_ms",
                                            "gpu", "source", "note",
                                            "torch", "carbench_version", "git_commit", "created_at", "command"]


@dataclass(frozen=True)
class Schema:
    """One board: its columns, the key that identifies a row, the numeric columns, and the metric a measured row
    must carry (a finite number)."""
    key: tuple
    columns: tuple
    numeric: tuple
    headline: str


def _schemas() -> dict[str, Schema]:
    task = Schema(tuple(TASK_KEY), tuple(TASK_COLUMNS), ("value", "n_images", *DELTA_COLUMNS), "value")
    return {"fidelity": Schema(tuple(FIDELITY_KEY), tuple(FIDELITY_COLUMNS),
                               ("psnr", "ssim", "psnrb", "lpips", "fid", "kid", "bpp", "n_images", "n_skipped",
                                "n_gray", *DELTA_COLUMNS), "psnr"),
            "classification": task, "detection": task, "segmentation": task,
            "efficiency": Schema(tuple(EFFICIENCY_KEY), tuple(EFFICIENCY_COLUMNS),
                                 ("params_m", "gflops", "gmacs", "latency_ms", "threads"), "params_m")}


def schema_for(columns) -> Schema | None:
    return next((s for s in _schemas().values() if tuple(columns) == s.columns), None)


def validate(df: pd.DataFrame, schema: Schema, where: str) -> None:
    """Raise LeaderboardError at the first row that breaks the schema."""
    missing = [c for c in schema.key if c not in df.columns]
    if missing:
        raise LeaderboardError(f"{where}: missing columns {missing} (a {len(df.columns)}-column file; the board has "
                               f"{', '.join(schema.columns)})")
    for i, r in enumerate(df.to_dict("records")):
        src = r.get("source", "")
        if src not in SOURCES:
            raise LeaderboardError(f"{where}: row {i + 1} ({_row_label(r, schema)}): source {src!r} is not one of "
                                   f"{SOURCES}")
        for c in schema.numeric:
            v = r.get(c, "")
            if v not in ("", None):
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise LeaderboardError(f"{where}: row {i + 1} ({_row_label(r, schema)}): {c}={v!r} is not a "
                                           f"number") from None
        if src == "measured":
            v = r.get(schema.headline, "")
            if v in ("", None) or not math.isfinite(float(v)):
                raise LeaderboardError(f"{where}: row {i + 1} ({_row_label(r, schema)}): a measured row needs a "
                                       f"finite {schema.headline}, got {v!r}")


def split_valid(rows: list[dict], columns: list[str] = FIDELITY_COLUMNS) -> tuple[list[dict], list[str]]:
    """(rows that fit the board's schema, one error per row that does not, naming it): a caller writes the valid
    rows, so one bad row never costs the others."""
    schema = schema_for(columns)
    if schema is None:
        return list(rows), []
    good, errors = [], []
    for r in rows:
        try:
            validate(pd.DataFrame([{c: _fmt(r.get(c, "")) for c in columns}], columns=columns, dtype=str), schema,
                     "row")
        except LeaderboardError as e:
            errors.append(str(e).replace("row: row 1 ", "row ", 1))
        else:
            good.append(r)
    return good, errors


def _row_label(r: dict, schema: Schema) -> str:
    return " ".join(f"{k}={r.get(k, '')}" for k in schema.key if r.get(k, "") not in ("",))


def default_path(board: str = "fidelity") -> Path:
    """The committed board (leaderboards/<board>.csv)."""
    return LEADERBOARD_DIR / f"{board}.csv"


def git_commit() -> str:
    """The commit a row is measured at (`<commit>-dirty+<diff digest>` from a modified tree)."""
    from benchmark.boards import provenance

    return provenance.git_commit()


def command() -> str:
    """The exact command that measured this process's rows."""
    from benchmark.boards import provenance

    return provenance.command()


def carbench_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("carbench")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def now() -> str:
    """UTC time of the row; $SOURCE_DATE_EPOCH (the reproducible-builds convention) pins it, so that the same
    seed gives a byte-identical board."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).isoformat()
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read(path: str | os.PathLike, board: str | None = None) -> pd.DataFrame:
    """A board as strings; `board` (fidelity, classification, ..., efficiency) validates it against its schema."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LeaderboardError(f"{path}: not a readable CSV board: {e}") from e
    for c, after in ADDED_COLUMNS.items():  # a fidelity or task board written before they existed
        after = next((a for a in ((after,) if isinstance(after, str) else after) if a in df.columns), None)
        if c not in df.columns and after is not None and ADDED_ONLY_WITH.get(c, after) in df.columns:
            df.insert(df.columns.get_loc(after) + 1, c, "")
    if board is not None:
        validate(df, _schemas()[board], str(path))
    return df


def upsert(path: str | os.PathLike, rows: list[dict], key: list[str] = FIDELITY_KEY,
           columns: list[str] = FIDELITY_COLUMNS) -> Path:
    """Insert rows, replacing any existing row with the same key. Atomic and locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = pd.DataFrame([{c: _fmt(r.get(c, "")) for c in columns} for r in rows], columns=columns, dtype=str)
    new = new.drop_duplicates(subset=key, keep="last")  # one row per key, the latest, also within one batch
    schema = schema_for(columns)
    if schema is not None:  # refuse a bad row before touching the file
        validate(new, schema, f"rows for {path}")
    with FileLock(str(path) + ".lock", timeout=120):
        old = read(path)
        if not old.empty:
            for c in columns:  # an older file may lack newer columns
                if c not in old.columns:
                    old[c] = ""
            extra = [c for c in old.columns if c not in columns]
            new_keys = set(map(tuple, new[key].values.tolist()))
            keep = [tuple(k) not in new_keys for k in old[key].values.tolist()]
            merged = pd.concat([old.loc[keep, columns + extra], new], ignore_index=True).fillna("")
        else:
            merged = new
        merged = merged.sort_values(key, kind="stable").reset_index(drop=True)
        _write_atomic(path, merged)
    return path


def remove(path: str | os.PathLike, rows: list[dict], key: list[str]) -> int:
    """Delete the board's rows whose key values are those of one of `rows` (atomic and locked); the number
    deleted."""
    path = Path(path)
    drop = {tuple(_fmt(r.get(k, "")) for k in key) for r in rows}
    if not drop or not path.exists():
        return 0
    with FileLock(str(path) + ".lock", timeout=120):
        old = read(path)
        if old.empty:
            return 0
        keep = [tuple(k) not in drop for k in old[key].values.tolist()]
        n = len(keep) - sum(keep)
        if n:
            _write_atomic(path, old.loc[keep].reset_index(drop=True))
    return n


def _write_atomic(path: Path, df: pd.DataFrame) -> None:
    """Write-then-rename; call with the board's lock held."""
    remove_stale_tmp(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


_HASHES: dict[tuple, str] = {}


def weights_sha256(weights: str | os.PathLike | None) -> str:
    """The `weights_sha256` of a row: the first 12 hex digits of the sha256 of the weights file's bytes; `weights`
    is a path, or a bare file name looked up as a preset's default is (`find_weights`). "" when there is no file.
    Hashed once per file (cached by path, mtime and size)."""
    path = resolve_weights_file(weights)
    if path is None:
        return ""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()[:12]
    return _HASHES[key]


def resolve_weights_file(weights: str | os.PathLike | None) -> Path | None:
    """The file a `weights` value names: the path itself, else its file name where find_weights finds it."""
    if weights in (None, ""):
        return None
    path = Path(weights)
    if path.is_file():
        return path
    from lightning_modules.registry import find_weights

    return find_weights(path.name)


def add_weights_hashes(path: str | os.PathLike, board: str) -> int:
    """Migration of a board written before `weights_sha256`: fill it in for every measured row whose `weights`
    names a file that resolves here (the path itself or find_weights); paper rows and rows without a file keep "".
    Atomic (write-then-rename under the board's lock). Returns the number of rows filled."""
    path = Path(path)
    schema = _schemas()[board]
    columns = list(schema.columns)
    with FileLock(str(path) + ".lock", timeout=120):
        df = read(path, board)
        if df.empty:
            return 0
        filled = 0
        for i, r in df.iterrows():
            if r["source"] == "measured" and r["weights"] and not r["weights_sha256"]:
                digest = weights_sha256(r["weights"])
                if digest:
                    df.at[i, "weights_sha256"] = digest
                    filled += 1
        extra = [c for c in df.columns if c not in columns]
        for c in columns:
            if c not in df.columns:
                df[c] = ""
        df = df[columns + extra]
        # an old row and a newer re-measurement of it (same file, now hashed) become one key: keep the newer row
        # when both carry the same values; differing values are a conflict to resolve by hand
        values = [c for c in (schema.numeric or ()) if c in df.columns]
        key = list(schema.key)
        dup = df.duplicated(subset=key, keep=False)
        if dup.any():
            conflicts = df[dup].groupby(key, sort=False)[values].nunique().gt(1).any(axis=1) if values else None
            if conflicts is not None and conflicts.any():
                raise LeaderboardError(f"{path}: rows {[i + 1 for i in df.index[dup]]} share one key after migration "
                                       f"with different values")
            df = df.sort_values("created_at", kind="stable").drop_duplicates(subset=key, keep="last")
        df = df.sort_values(list(schema.key), kind="stable").reset_index(drop=True)
        _write_atomic(path, df)
    return filled


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete `.NAME.<pid>.tmp` files of this board left by a writer that was killed mid-write (its pid is gone).
    Call with the board's lock held: a live writer's file is never touched."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:  # another writer got there first
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # signal 0 is a probe on POSIX only (on Windows os.kill terminates): keep the file
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # PermissionError: alive under another user; anything else: cannot tell, keep its file
        return True
    return True


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if v == v and abs(v) != float("inf") else str(v)
    return "" if v is None else str(v)
