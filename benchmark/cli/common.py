"""What the commands share: comma lists, QF and pass parsing, dry-run listings, the board hint, baselines."""
from __future__ import annotations

import argparse

from datamodules.corruptions import AFD_QF_SET, Corruption, CorruptionError, parse_qf

EXIT_USAGE, EXIT_FAILED = 2, 1


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _items(text: str, flag: str) -> list[str]:
    """A comma list where every item counts: `10,,20` is a typo, not `10,20` (an empty item is an error)."""
    items = [x.strip() for x in text.split(",")]
    for i, x in enumerate(items):
        if not x or any(not q.strip() for q in x.split(">")):
            what = "is empty" if not x else f"{x!r} has an empty QF in its chain"
            raise CorruptionError(f"{flag} {text!r}: item {i + 1} {what}")
    return items


# named QF lists for `--qf`: the field's usual table columns and JARCAL Table 4's QFs unseen in training (10..90)
QF_PRESETS = {"seen": "10,20,30,40", "unseen": "15,25,35,45"}


def parse_corruptions(qf: str | None, codec: str, passes: str | None, seed: int, subsampling: str) -> list[Corruption]:
    """`--qf '10,20,30>10'` -> single passes and Q1>Q2 chains (`--qf unseen`: a QF_PRESETS name); `--passes 1,3
    [--qf set]` -> passes drawn from the set (default the AFD set 25/18/15/10/7), seeded."""
    qf = QF_PRESETS.get(qf.strip(), qf) if qf else qf
    if passes:
        try:  # `1,3,5` or a range `1..5`
            counts = [n for p in _items(passes, "--passes")
                      for n in (range(int(p.split("..")[0]), int(p.split("..")[1]) + 1) if ".." in p else [int(p)])]
        except CorruptionError:
            raise
        except ValueError:
            raise CorruptionError(f"--passes {passes!r}: expected integers 1..5 (a list 1,3 or a range 1..5)") from None
        if not counts:
            raise CorruptionError(f"--passes {passes!r}: no pass count")
        qset = tuple(_flagged(parse_qf, "--qf", qf, q) for q in _items(qf, "--qf")) if qf else AFD_QF_SET
        return [_flagged(Corruption, "--passes", passes, codec, qset, passes=n, draw=True, seed=seed,
                         subsampling=subsampling) for n in counts]
    qf = qf or "10,20,30,40"
    return [_flagged(Corruption, "--qf", qf, codec, tuple(_flagged(parse_qf, "--qf", qf, q) for q in item.split(">")),
                     subsampling=subsampling, seed=seed)
            for item in _items(qf, "--qf")]


def _flagged(fn, flag: str, text: str, *args, **kwargs):
    """fn(*args, **kwargs), its CorruptionError prefixed with the flag and value that caused it."""
    try:
        return fn(*args, **kwargs)
    except CorruptionError as e:
        raise CorruptionError(f"{flag} {text!r}: {e}") from None


def _board_hint(explicit: str | None) -> str:
    """Said when rows went to the user's board by default (the committed boards need --leaderboard leaderboards/)."""
    return "" if explicit else (" (your results board: $CARBENCH_RESULTS or ./carbench-results/; --leaderboard "
                                "names another)")


def _method_label(name: str, preset: str | None) -> str:
    """`method.preset` as the rows will name it (names were validated before)."""
    from lightning_modules.registry import resolve_preset

    entry, preset_name, _ = resolve_preset(name, None if "." in name else preset)
    return f"{entry.name}.{preset_name}"


def _print_dry_run(header: list[str], jobs: list[tuple], what: str) -> int:
    """`--dry-run`: the jobs a run would do, one a line; nothing is evaluated or written."""
    widths = [max(len(h), *(len(str(j[i])) for j in jobs)) for i, h in enumerate(header)]
    for cells in [header, *jobs]:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
    print(f"dry run: {len(jobs)} {what}; nothing evaluated or written")
    return 0


def imagenet_dataset(folder: str) -> str:
    """`imagenet:DIR` for wnid sub-folders (ImageNet val), else `imagenet-flat:DIR` (`<wnid>_*.JPEG`)."""
    from datamodules.sources import imagenet_layout

    return f"{imagenet_layout(folder)}:{folder}"


def _qf_range(text: str) -> tuple[int, int]:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"bad QF range {text!r}: expected LO,HI such as 10,40")
    try:
        parts = _items(text, "bad QF range")
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    try:
        lo, hi = parse_qf(parts[0]), parse_qf(parts[-1])
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(f"bad QF range {text!r}: {e}") from None
    if len(parts) > 2 or lo > hi:
        raise argparse.ArgumentTypeError(f"bad QF range {text!r}: need LO <= HI, two values")
    return lo, hi


def _qf_override(text: str) -> int:
    try:
        return parse_qf(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad --qf-override {text!r}: {e}") from None


def _qf_set(text: str) -> tuple[int, ...]:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"bad QF set {text!r}: give at least one QF")
    try:
        items = _items(text, "bad QF set")
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    try:
        qfs = tuple(parse_qf(q) for q in items)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad QF set {text!r}: {e}") from None
    return qfs


# which published paper a carbench method comes from (for source=paper reference rows)
METHOD_PAPER = {"dagn": "dagn", "n2n_unet": "n2n", "afd": "afd", "dualpriors": "dualpriors", "jarcal": "jarcal"}


def baseline_methods(exclude: list[str], restorers: bool = True) -> list[str]:
    """Every registered method whose default preset can run here: shipped/found weights, or self-contained.
    restorers=True: the image restorers; False: the methods that work inside a classifier (de-drifters, fine-tuning)."""
    from lightning_modules.registry import _REGISTRY, _load_plugins, find_weights

    _load_plugins()
    names = []
    for name, entry in sorted(_REGISTRY.items()):
        preset = entry.presets[entry.default_preset]
        is_restorer = getattr(entry.module_cls, "kind", "restorer") == "restorer"
        if name == "jpeg" or name in exclude or is_restorer != restorers:
            continue
        if preset.self_contained or (preset.weights and find_weights(preset.weights)):
            names.append(name)
    return names


# ---- `benchmark check`: its suites (here, light: the command line checks --suite before the boards are imported)
# suite -> its runs: (the `benchmark` arguments, what the run needs beyond the checkout). Needs: "" nothing (the
# embedded default); "test-sets" ($CARBENCH_DATA or ../shared/data/test); "imagenet" (the ImageNet sample:
# $CARBENCH_IMAGENET or ../shared); "centernet" (the sample + the detector's files, docker/install.sh); "selfie"
# (BSDS500_test + the person segmenter's files). A run whose needs are missing is skipped with a message; a method
# whose weights file is not found is left out, named.
SUITE: dict[str, list[tuple[list[str], str]]] = {
    "fidelity": [(["run", "--method", "dncnn,dagn,n2n_unet,jarcal,dualpriors,arcnn,fbcnn", "--qf", "10,20"], "")],
    "tasks": [(["run", "--task", "classification,detection,segmentation", "--method", "jpeg,dncnn", "--qf", "10,20"],
               "")],
    # The rows the README's headline tables cite (tests/test_check_headline.py holds the two in step): the fidelity
    # table's rows re-measured whole (LIVE1: 29 photos, Classic5: 5), the 1000-photo classification and detection
    # rows by the committed subset row beside each (the first 200 / 100 photos of the same sample, same pipeline).
    "headline-fidelity": [
        (["run", "--dataset", "live1", "--method", "dagn,jarcal,fbcnn,dncnn,n2n_unet,arcnn", "--qf", "10"],
         "test-sets"),
        (["run", "--dataset", "live1-gray,classic5", "--method", "dncnn.paper,arcnn.paper,dualpriors", "--qf", "10"],
         "test-sets"),
        (["run", "--dataset", "classic5", "--method", "dcsc.paper", "--qf", "10"], "test-sets"),
    ],
    "headline-classification": [
        (["run", "--task", "classification", "--task-model", "efficientnet_lite0", "--method",
          "jpeg,fbcnn,dagn,n2n_unet,jarcal,dncnn,arcnn,afd.lite0_ood,afd.lite0_ood_kl,degradation_prior.lite0_ood,"
          "jpeg_finetune.lite0_ood,jpeg_finetune.lite0", "--qf", "10",
          "--n-images", "200"], "imagenet"),
    ],
    "headline-detection": [
        (["run", "--task", "detection", "--task-model", "centernet_mbv3", "--method",
          "jpeg,jarcal,dagn,urie,fbcnn,dncnn,arcnn,n2n_unet", "--qf", "10", "--n-images", "100"], "centernet"),
    ],
    # the real person segmenter on the first 50 BSDS500 test photos (person-mask consistency, photos selected by the
    # clean mask: 26 of them), beside the README's 200-photo rows
    "headline-segmentation": [
        (["run", "--task", "segmentation", "--task-model", "selfie_seg", "--method", "jpeg,fbcnn", "--qf", "10",
          "--n-images", "50"], "selfie"),
    ],
}
# names that stand for several suites
SUITE_ALIASES = {"headline": ["headline-fidelity", "headline-classification", "headline-detection",
                              "headline-segmentation"]}


def expand_suites(names: list[str]) -> list[str]:
    """Suite names with aliases expanded, in order, once each; raises ValueError naming unknown ones."""
    unknown = [s for s in names if s not in SUITE and s not in SUITE_ALIASES]
    if unknown:
        raise ValueError(f"unknown check suite(s) {unknown}; suites: {list(SUITE) + list(SUITE_ALIASES)}")
    out: list[str] = []
    for s in names:
        for t in SUITE_ALIASES.get(s, [s]):
            if t not in out:
                out.append(t)
    return out
