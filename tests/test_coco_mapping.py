"""The label-proxy table: ImageNet-1k classes whose images are instances of a COCO category."""
from collections import Counter

import pytest

from datamodules import detection as det
from datamodules.classification import imagenet_lemmas, imagenet_wnids
from tests.conftest import SHARED, need_shared

SAMPLE = ("data", "train", "ImageNet_sample1000")
MAPPED_CLASSES = 298  # the table's size; a change to it should be a deliberate one


@pytest.fixture(scope="module")
def by_lemma():
    """{ImageNet lemma: COCO name or None}."""
    names = det.COCO_CATEGORIES
    return {lemma: names.get(det.coco_category_of(w)) for w, lemma in zip(imagenet_wnids(), imagenet_lemmas())}


def test_coco_categories_are_the_80_with_coco_ids():
    cats = det.COCO_CATEGORIES
    assert len(cats) == 80 and cats[1] == "person" and cats[90] == "toothbrush" and cats[18] == "dog"
    assert {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}.isdisjoint(cats)  # the ids COCO dropped
    assert det.COCO_CATEGORY_IDS["teddy bear"] == 88


def test_every_mapped_class_is_a_real_imagenet_class_and_a_real_coco_id():
    table = det.IMAGENET_TO_COCO
    listed = [w for wnids in det.IMAGENET_BY_COCO.values() for w in wnids]
    assert len(listed) == len(set(listed)) == len(table) == MAPPED_CLASSES  # no class under two categories
    assert set(table) <= set(imagenet_wnids())
    assert set(table.values()) <= set(det.COCO_CATEGORIES)
    assert det.coco_category_of("n00000000") is None


def test_spot_checks_by_imagenet_name(by_lemma):
    terriers = [lemma for lemma in by_lemma if "terrier" in lemma]
    assert len(terriers) >= 20 and all(by_lemma[t] == "dog" for t in terriers)
    expected = {"airliner": "airplane", "warplane, military plane": "airplane", "teddy, teddy bear": "teddy bear",
                "tabby, tabby cat": "cat", "tiger cat": "cat", "Egyptian cat": "cat",
                "tiger, Panthera tigris": None, "lion, king of beasts, Panthera leo": None, "ox": "cow",
                "sorrel": "horse", "ram, tup": "sheep", "zebra": "zebra", "tusker": "elephant",
                "ice bear, polar bear, Ursus Maritimus, Thalarctos maritimus": "bear", "laptop, laptop computer": "laptop",
                "mouse, computer mouse": "mouse", "remote control, remote": "remote", "hotdog, hot dog, red hot": "hot dog",
                "park bench": "bench", "wall clock": "clock", "analog clock": "clock", "traffic light, traffic signal, "
                "stoplight": "traffic light", "school bus": "bus", "pickup, pickup truck": "truck",
                "mountain bike, all-terrain bike, off-roader": "bicycle", "canoe": "boat", "golden retriever": "dog"}
    for lemma, coco in expected.items():
        assert by_lemma[lemma] == coco, lemma
    # ImageNet's kite and one of its two cranes are birds (COCO's kite is the toy); the crane machine is no COCO object
    assert det.coco_category_of("n01608432") == det.COCO_CATEGORY_IDS["bird"]  # kite (the bird)
    assert det.coco_category_of("n02012849") == det.COCO_CATEGORY_IDS["bird"]  # crane (the bird)
    assert det.coco_category_of("n03126707") is None  # crane (the machine)
    for wild in ("timber wolf", "red fox", "giant panda", "koala", "bighorn", "bison", "snow leopard", "cheetah"):
        assert all(by_lemma[lem] is None for lem in by_lemma if lem.startswith(wild)), wild


@need_shared(*SAMPLE)
def test_mapped_images_in_the_imagenet_sample():
    files = sorted((SHARED.joinpath(*SAMPLE)).glob("*.JPEG"))
    mapped = Counter(det.COCO_CATEGORIES[c] for f in files if (c := det.coco_category_of(f.name.split("_")[0])))
    assert len(files) == 1000 and sum(mapped.values()) == MAPPED_CLASSES  # one image per class
    assert mapped["dog"] == 118 and mapped["bird"] == 59 and mapped["cat"] == 5
