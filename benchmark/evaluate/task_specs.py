"""What a downstream-task request may name, without torch or Lightning: task names, dataset specs (`shapes` or
KIND:PATH) and the names that mean "no restoration". `benchmark.evaluate.tasks` runs the requests; the command
line checks its arguments against these before the heavy imports."""
from __future__ import annotations

from datamodules.shapes import TASKS

NO_RESTORATION = {"jpeg", "direct", "none"}  # names that mean "score the corrupted image as it is"


# dataset kind -> the tasks it serves
REAL_DATASETS = {"imagenet": ("classification", "detection", "segmentation"),
                 "imagenet-flat": ("classification", "detection", "segmentation"),
                 "cub200": ("classification",), "flowers102": ("classification",), "coco": ("detection",),
                 "voc": ("segmentation",), "photos": ("detection", "segmentation")}
# detection and segmentation on them: no annotations; consistency with the clean photo's output (+ label proxy)
PHOTO_KINDS = {"imagenet", "imagenet-flat", "photos"}


def parse_dataset(spec: str) -> tuple[str, str | None]:
    if spec == "shapes":
        return "shapes", None
    kind, sep, root = spec.partition(":")
    if not sep or kind not in REAL_DATASETS or not root:
        raise ValueError(f"dataset {spec!r}: use `shapes` or KIND:PATH with KIND one of {', '.join(REAL_DATASETS)}")
    return kind, root


def check_request(tasks: list[str], dataset: str) -> str:
    """Fail fast on task names and on a dataset that cannot serve a task; -> the dataset kind."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: use {', '.join(TASKS)}")
    kind, _ = parse_dataset(dataset)
    wrong = [t for t in tasks if kind != "shapes" and t not in REAL_DATASETS[kind]]
    if wrong:
        raise ValueError(f"dataset {dataset!r} is a {' / '.join(REAL_DATASETS[kind])} set, not {', '.join(wrong)}")
    return kind
