"""Detection datasets: the COCO val2017 layout read with pycocotools.

`CocoDetection`: `<root>/val2017/*.jpg` + `<root>/annotations/instances_val2017.json`; items are (uint8 (3, H, W)
tensor, target) with target boxes xyxy float32 in pixels and labels that are COCO category ids (what torchvision's
COCO detectors output, so no remapping). COCO box mAP: `benchmark.metrics.detection`.

The label proxy (real photos without boxes): `IMAGENET_TO_COCO` maps an ImageNet-1k class to the COCO category its
images are instances of (`coco_category_of(wnid)`); `COCO_CATEGORIES` names the 80 categories by their COCO ids.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on stdout; keep the benchmark's output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """pycocotools `COCO` from an instances json; a missing or unreadable file is an error naming it."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {ann_file} does not exist")
    try:
        with _quiet():
            return COCO(str(ann_file))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"COCO annotation file {ann_file} is not a valid instances json: {e}") from e


class CocoDetection(torch.utils.data.Dataset):
    """COCO detection images and boxes, in image-id order.

    Item: `(image, target)`; image uint8 (3, H, W) RGB (gray and CMYK files are converted), passed through
    `transform` when given (e.g. a corruption; it must keep the geometry, boxes are not transformed); target
    `{"boxes": float32 (K, 4) xyxy, "labels": int64 (K,) COCO category ids, "image_id": int, "iscrowd": int64 (K,),
    "area": float32 (K,)}` with every annotation of the image, crowd ones flagged (COCOeval ignores them).
    `image_ids` restricts to a subset (evaluate `coco_map(..., image_ids=ds.ids)` then).
    """

    def __init__(self, root: str | os.PathLike, split: str = "val2017", image_ids: Iterable[int] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        root = Path(root).expanduser()
        self.image_dir = root / split
        self.ann_file = root / "annotations" / f"instances_{split}.json"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} does not exist (expected the layout "
                                    f"<root>/{split}/*.jpg with <root>/annotations/instances_{split}.json)")
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {self.ann_file} does not exist (expected the layout "
                                    f"<root>/{split}/*.jpg with <root>/annotations/instances_{split}.json)")
        self.coco = load_coco(self.ann_file)
        all_ids = sorted(self.coco.getImgIds())
        if image_ids is None:
            self.ids = all_ids
        else:
            self.ids = [int(i) for i in image_ids]
            unknown = sorted(set(self.ids) - set(all_ids))
            if unknown:
                raise KeyError(f"image ids {unknown[:10]} are not in {self.ann_file}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def target(self, index: int) -> dict:
        image_id = self.ids[index]
        anns = self.coco.imgToAnns.get(image_id, [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        return {
            "boxes": boxes,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": image_id,
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
            "area": torch.tensor([a.get("area", w * h) for a, (_, _, w, h) in zip(anns, xywh.tolist())],
                                 dtype=torch.float32),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"COCO image {path} (image id {self.ids[index]}) does not exist")
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(index)


def collate_detection(batch):
    """DataLoader collate for detection: a tuple of images and a tuple of targets (sizes differ)."""
    return tuple(zip(*batch))


# ImageNet-1k classes whose images ARE instances of a COCO category, by COCO name (ids come from `coco_categories()`).
# Conservative: a class is listed only when every image of it shows that object as COCO annotates it. Left out on
# purpose: wild canids (wolves, dingo, dhole, foxes), big cats, giant/lesser panda and koala, wild sheep/cattle
# (bighorn, ibex, bison, water buffalo), hog, ambulance/police van/RV (car or truck?), submarine and wreck, parts
# (toilet seat, space bar, CRT screen, wing, paddlewheel), flowerpot (COCO's potted plant is the plant), goblet and
# beer glass, cheeseburger, comic book / book jacket, street sign (not only stop signs).
IMAGENET_BY_COCO: dict[str, tuple[str, ...]] = {
    "person": (
        "n09835506",  # ballplayer, baseball player
        "n10148035",  # groom, bridegroom
        "n10565667",  # scuba diver
    ),
    "bicycle": (
        "n02835271",  # bicycle-built-for-two, tandem bicycle, tandem
        "n03792782",  # mountain bike, all-terrain bike, off-roader
    ),
    "car": (
        "n02814533",  # beach wagon, station wagon, wagon, estate car, beach waggon, station waggon, waggon
        "n02930766",  # cab, hack, taxi, taxicab
        "n03100240",  # convertible
        "n03594945",  # jeep, landrover
        "n03670208",  # limousine, limo
        "n03770679",  # minivan
        "n03777568",  # Model T
        "n04037443",  # racer, race car, racing car
        "n04285008",  # sports car, sport car
    ),
    "motorcycle": (
        "n03785016",  # moped
        "n03791053",  # motor scooter, scooter
    ),
    "airplane": (
        "n02690373",  # airliner
        "n04552348",  # warplane, military plane
    ),
    "bus": (
        "n03769881",  # minibus
        "n04146614",  # school bus
        "n04487081",  # trolleybus, trolley coach, trackless trolley
    ),
    "train": (
        "n02917067",  # bullet train, bullet
        "n03272562",  # electric locomotive
        "n03393912",  # freight car
        "n03895866",  # passenger car, coach, carriage
        "n04310018",  # steam locomotive
        "n04335435",  # streetcar, tram, tramcar, trolley, trolley car
    ),
    "truck": (
        "n03345487",  # fire engine, fire truck
        "n03417042",  # garbage truck, dustcart
        "n03796401",  # moving van
        "n03930630",  # pickup, pickup truck
        "n04461696",  # tow truck, tow car, wrecker
        "n04467665",  # trailer truck, tractor trailer, trucking rig, rig, articulated lorry, semi
    ),
    "boat": (
        "n02687172",  # aircraft carrier, carrier, flattop, attack aircraft carrier
        "n02951358",  # canoe
        "n02981792",  # catamaran
        "n03095699",  # container ship, containership, container vessel
        "n03344393",  # fireboat
        "n03447447",  # gondola
        "n03662601",  # lifeboat
        "n03673027",  # liner, ocean liner
        "n03947888",  # pirate, pirate ship
        "n04147183",  # schooner
        "n04273569",  # speedboat
        "n04483307",  # trimaran
        "n04612504",  # yawl
    ),
    "traffic light": (
        "n06874185",  # traffic light, traffic signal, stoplight
    ),
    "parking meter": (
        "n03891332",  # parking meter
    ),
    "bench": (
        "n03891251",  # park bench
    ),
    "bird": (
        "n01514668",  # cock
        "n01514859",  # hen
        "n01518878",  # ostrich, Struthio camelus
        "n01530575",  # brambling, Fringilla montifringilla
        "n01531178",  # goldfinch, Carduelis carduelis
        "n01532829",  # house finch, linnet, Carpodacus mexicanus
        "n01534433",  # junco, snowbird
        "n01537544",  # indigo bunting, indigo finch, indigo bird, Passerina cyanea
        "n01558993",  # robin, American robin, Turdus migratorius
        "n01560419",  # bulbul
        "n01580077",  # jay
        "n01582220",  # magpie
        "n01592084",  # chickadee
        "n01601694",  # water ouzel, dipper
        "n01608432",  # kite
        "n01614925",  # bald eagle, American eagle, Haliaeetus leucocephalus
        "n01616318",  # vulture
        "n01622779",  # great grey owl, great gray owl, Strix nebulosa
        "n01795545",  # black grouse
        "n01796340",  # ptarmigan
        "n01797886",  # ruffed grouse, partridge, Bonasa umbellus
        "n01798484",  # prairie chicken, prairie grouse, prairie fowl
        "n01806143",  # peacock
        "n01806567",  # quail
        "n01807496",  # partridge
        "n01817953",  # African grey, African gray, Psittacus erithacus
        "n01818515",  # macaw
        "n01819313",  # sulphur-crested cockatoo, Kakatoe galerita, Cacatua galerita
        "n01820546",  # lorikeet
        "n01824575",  # coucal
        "n01828970",  # bee eater
        "n01829413",  # hornbill
        "n01833805",  # hummingbird
        "n01843065",  # jacamar
        "n01843383",  # toucan
        "n01847000",  # drake
        "n01855032",  # red-breasted merganser, Mergus serrator
        "n01855672",  # goose
        "n01860187",  # black swan, Cygnus atratus
        "n02002556",  # white stork, Ciconia ciconia
        "n02002724",  # black stork, Ciconia nigra
        "n02006656",  # spoonbill
        "n02007558",  # flamingo
        "n02009229",  # little blue heron, Egretta caerulea
        "n02009912",  # American egret, great white heron, Egretta albus
        "n02011460",  # bittern
        "n02012849",  # crane
        "n02013706",  # limpkin, Aramus pictus
        "n02017213",  # European gallinule, Porphyrio porphyrio
        "n02018207",  # American coot, marsh hen, mud hen, water hen, Fulica americana
        "n02018795",  # bustard
        "n02025239",  # ruddy turnstone, Arenaria interpres
        "n02027492",  # red-backed sandpiper, dunlin, Erolia alpina
        "n02028035",  # redshank, Tringa totanus
        "n02033041",  # dowitcher
        "n02037110",  # oystercatcher, oyster catcher
        "n02051845",  # pelican
        "n02056570",  # king penguin, Aptenodytes patagonica
        "n02058221",  # albatross, mollymawk
    ),
    "cat": (
        "n02123045",  # tabby, tabby cat
        "n02123159",  # tiger cat
        "n02123394",  # Persian cat
        "n02123597",  # Siamese cat, Siamese
        "n02124075",  # Egyptian cat
    ),
    "dog": (
        "n02085620",  # Chihuahua
        "n02085782",  # Japanese spaniel
        "n02085936",  # Maltese dog, Maltese terrier, Maltese
        "n02086079",  # Pekinese, Pekingese, Peke
        "n02086240",  # Shih-Tzu
        "n02086646",  # Blenheim spaniel
        "n02086910",  # papillon
        "n02087046",  # toy terrier
        "n02087394",  # Rhodesian ridgeback
        "n02088094",  # Afghan hound, Afghan
        "n02088238",  # basset, basset hound
        "n02088364",  # beagle
        "n02088466",  # bloodhound, sleuthhound
        "n02088632",  # bluetick
        "n02089078",  # black-and-tan coonhound
        "n02089867",  # Walker hound, Walker foxhound
        "n02089973",  # English foxhound
        "n02090379",  # redbone
        "n02090622",  # borzoi, Russian wolfhound
        "n02090721",  # Irish wolfhound
        "n02091032",  # Italian greyhound
        "n02091134",  # whippet
        "n02091244",  # Ibizan hound, Ibizan Podenco
        "n02091467",  # Norwegian elkhound, elkhound
        "n02091635",  # otterhound, otter hound
        "n02091831",  # Saluki, gazelle hound
        "n02092002",  # Scottish deerhound, deerhound
        "n02092339",  # Weimaraner
        "n02093256",  # Staffordshire bullterrier, Staffordshire bull terrier
        "n02093428",  # American Staffordshire terrier, Staffordshire terrier, American pit bull terrier, pit bull terrier
        "n02093647",  # Bedlington terrier
        "n02093754",  # Border terrier
        "n02093859",  # Kerry blue terrier
        "n02093991",  # Irish terrier
        "n02094114",  # Norfolk terrier
        "n02094258",  # Norwich terrier
        "n02094433",  # Yorkshire terrier
        "n02095314",  # wire-haired fox terrier
        "n02095570",  # Lakeland terrier
        "n02095889",  # Sealyham terrier, Sealyham
        "n02096051",  # Airedale, Airedale terrier
        "n02096177",  # cairn, cairn terrier
        "n02096294",  # Australian terrier
        "n02096437",  # Dandie Dinmont, Dandie Dinmont terrier
        "n02096585",  # Boston bull, Boston terrier
        "n02097047",  # miniature schnauzer
        "n02097130",  # giant schnauzer
        "n02097209",  # standard schnauzer
        "n02097298",  # Scotch terrier, Scottish terrier, Scottie
        "n02097474",  # Tibetan terrier, chrysanthemum dog
        "n02097658",  # silky terrier, Sydney silky
        "n02098105",  # soft-coated wheaten terrier
        "n02098286",  # West Highland white terrier
        "n02098413",  # Lhasa, Lhasa apso
        "n02099267",  # flat-coated retriever
        "n02099429",  # curly-coated retriever
        "n02099601",  # golden retriever
        "n02099712",  # Labrador retriever
        "n02099849",  # Chesapeake Bay retriever
        "n02100236",  # German short-haired pointer
        "n02100583",  # vizsla, Hungarian pointer
        "n02100735",  # English setter
        "n02100877",  # Irish setter, red setter
        "n02101006",  # Gordon setter
        "n02101388",  # Brittany spaniel
        "n02101556",  # clumber, clumber spaniel
        "n02102040",  # English springer, English springer spaniel
        "n02102177",  # Welsh springer spaniel
        "n02102318",  # cocker spaniel, English cocker spaniel, cocker
        "n02102480",  # Sussex spaniel
        "n02102973",  # Irish water spaniel
        "n02104029",  # kuvasz
        "n02104365",  # schipperke
        "n02105056",  # groenendael
        "n02105162",  # malinois
        "n02105251",  # briard
        "n02105412",  # kelpie
        "n02105505",  # komondor
        "n02105641",  # Old English sheepdog, bobtail
        "n02105855",  # Shetland sheepdog, Shetland sheep dog, Shetland
        "n02106030",  # collie
        "n02106166",  # Border collie
        "n02106382",  # Bouvier des Flandres, Bouviers des Flandres
        "n02106550",  # Rottweiler
        "n02106662",  # German shepherd, German shepherd dog, German police dog, alsatian
        "n02107142",  # Doberman, Doberman pinscher
        "n02107312",  # miniature pinscher
        "n02107574",  # Greater Swiss Mountain dog
        "n02107683",  # Bernese mountain dog
        "n02107908",  # Appenzeller
        "n02108000",  # EntleBucher
        "n02108089",  # boxer
        "n02108422",  # bull mastiff
        "n02108551",  # Tibetan mastiff
        "n02108915",  # French bulldog
        "n02109047",  # Great Dane
        "n02109525",  # Saint Bernard, St Bernard
        "n02109961",  # Eskimo dog, husky
        "n02110063",  # malamute, malemute, Alaskan malamute
        "n02110185",  # Siberian husky
        "n02110341",  # dalmatian, coach dog, carriage dog
        "n02110627",  # affenpinscher, monkey pinscher, monkey dog
        "n02110806",  # basenji
        "n02110958",  # pug, pug-dog
        "n02111129",  # Leonberg
        "n02111277",  # Newfoundland, Newfoundland dog
        "n02111500",  # Great Pyrenees
        "n02111889",  # Samoyed, Samoyede
        "n02112018",  # Pomeranian
        "n02112137",  # chow, chow chow
        "n02112350",  # keeshond
        "n02112706",  # Brabancon griffon
        "n02113023",  # Pembroke, Pembroke Welsh corgi
        "n02113186",  # Cardigan, Cardigan Welsh corgi
        "n02113624",  # toy poodle
        "n02113712",  # miniature poodle
        "n02113799",  # standard poodle
        "n02113978",  # Mexican hairless
    ),
    "horse": (
        "n02389026",  # sorrel
    ),
    "sheep": (
        "n02412080",  # ram, tup
    ),
    "cow": (
        "n02403003",  # ox
    ),
    "elephant": (
        "n01871265",  # tusker
        "n02504013",  # Indian elephant, Elephas maximus
        "n02504458",  # African elephant, Loxodonta africana
    ),
    "bear": (
        "n02132136",  # brown bear, bruin, Ursus arctos
        "n02133161",  # American black bear, black bear, Ursus americanus, Euarctos americanus
        "n02134084",  # ice bear, polar bear, Ursus Maritimus, Thalarctos maritimus
        "n02134418",  # sloth bear, Melursus ursinus, Ursus ursinus
    ),
    "zebra": (
        "n02391049",  # zebra
    ),
    "backpack": (
        "n02769748",  # backpack, back pack, knapsack, packsack, rucksack, haversack
    ),
    "umbrella": (
        "n04507155",  # umbrella
    ),
    "handbag": (
        "n04026417",  # purse
    ),
    "tie": (
        "n02883205",  # bow tie, bow-tie, bowtie
        "n04591157",  # Windsor tie
    ),
    "skis": (
        "n04228054",  # ski
    ),
    "sports ball": (
        "n02799071",  # baseball
        "n02802426",  # basketball
        "n03134739",  # croquet ball
        "n03445777",  # golf ball
        "n03942813",  # ping-pong ball
        "n04118538",  # rugby ball
        "n04254680",  # soccer ball
        "n04409515",  # tennis ball
        "n04540053",  # volleyball
    ),
    "tennis racket": (
        "n04039381",  # racket, racquet
    ),
    "bottle": (
        "n02823428",  # beer bottle
        "n03937543",  # pill bottle
        "n03983396",  # pop bottle, soda bottle
        "n04557648",  # water bottle
        "n04591713",  # wine bottle
    ),
    "cup": (
        "n03063599",  # coffee mug
        "n07930864",  # cup
    ),
    "spoon": (
        "n04597913",  # wooden spoon
    ),
    "bowl": (
        "n03775546",  # mixing bowl
        "n04263257",  # soup bowl
    ),
    "banana": (
        "n07753592",  # banana
    ),
    "apple": (
        "n07742313",  # Granny Smith
    ),
    "orange": (
        "n07747607",  # orange
    ),
    "broccoli": (
        "n07714990",  # broccoli
    ),
    "hot dog": (
        "n07697537",  # hotdog, hot dog, red hot
    ),
    "pizza": (
        "n07873807",  # pizza, pizza pie
    ),
    "chair": (
        "n02791124",  # barber chair
        "n03376595",  # folding chair
        "n04099969",  # rocking chair, rocker
    ),
    "couch": (
        "n04344873",  # studio couch, day bed
    ),
    "bed": (
        "n03388549",  # four-poster
    ),
    "dining table": (
        "n03201208",  # dining table, board
    ),
    "tv": (
        "n03782006",  # monitor
        "n04404412",  # television, television system
    ),
    "laptop": (
        "n03642806",  # laptop, laptop computer
        "n03832673",  # notebook, notebook computer
    ),
    "mouse": (
        "n03793489",  # mouse, computer mouse
    ),
    "remote": (
        "n04074963",  # remote control, remote
    ),
    "keyboard": (
        "n03085013",  # computer keyboard, keypad
    ),
    "cell phone": (
        "n02992529",  # cellular telephone, cellular phone, cellphone, cell, mobile phone
    ),
    "microwave": (
        "n03761084",  # microwave, microwave oven
    ),
    "toaster": (
        "n04442312",  # toaster
    ),
    "sink": (
        "n04553703",  # washbasin, handbasin, washbowl, lavabo, wash-hand basin
    ),
    "refrigerator": (
        "n04070727",  # refrigerator, icebox
    ),
    "clock": (
        "n02708093",  # analog clock
        "n03196217",  # digital clock
        "n04548280",  # wall clock
    ),
    "vase": (
        "n04522168",  # vase
    ),
    "teddy bear": (
        "n04399382",  # teddy, teddy bear
    ),
    "hair drier": (
        "n03483316",  # hand blower, blow dryer, blow drier, hair dryer, hair drier
    ),
}


@functools.cache
def coco_categories() -> dict[int, str]:
    """{COCO category id: name} for the 80 categories, numbered as pycocotools and torchvision do (person=1 ...
    toothbrush=90; the gaps are categories COCO dropped), from torchvision's 91-entry list."""
    # imported here, not at the top: importing torchvision takes ~2 s
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    return {i: n for i, n in enumerate(names) if n not in ("__background__", "N/A")}


@functools.cache
def imagenet_to_coco() -> dict[str, int]:
    """{ImageNet wnid: COCO category id} from `IMAGENET_BY_COCO`."""
    ids = {n: i for i, n in coco_categories().items()}
    unknown = sorted(set(IMAGENET_BY_COCO) - set(ids))
    if unknown:
        raise KeyError(f"IMAGENET_BY_COCO names {unknown}, which are not COCO categories")
    return {wnid: ids[name] for name, wnids in IMAGENET_BY_COCO.items() for wnid in wnids}


def coco_category_of(wnid: str) -> int | None:
    """The COCO category id an ImageNet class's images are instances of; None when it has none."""
    return imagenet_to_coco().get(wnid)


def __getattr__(name: str):
    # COCO_CATEGORIES / COCO_CATEGORY_IDS / IMAGENET_TO_COCO as module constants, built on first use so that
    # importing this module does not import torchvision
    if name == "COCO_CATEGORIES":
        return coco_categories()
    if name == "COCO_CATEGORY_IDS":
        return {n: i for i, n in coco_categories().items()}
    if name == "IMAGENET_TO_COCO":
        return imagenet_to_coco()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
