"""Miniature copies of the five official DML benchmark releases, in their official layouts.

Each writer creates a copy under a folder, with tiny JPEGs whose colour depends on the class, and
returns a :class:`Copy` describing what it wrote (derived from the definitions below, not from
the loaders under test): the images of every official split with their class names, and the
class names in the canonical label order (training pool by official id, then the evaluation
classes by id).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

URLS = {
    "cub200": "https://www.vision.caltech.edu/datasets/cub_200_2011/",
    "cars196": "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
    "sop": "https://cvgl.stanford.edu/projects/lifted_struct/",
    "inshop": "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html",
    "vehicleid": "https://www.pkuml.org/resources/pku-vehicleid.html",
}


@dataclass
class Copy:
    root: Path                      # what `root:` in params.yaml points at
    data_root: Path                 # the folder holding the metadata files
    images: dict[str, list[tuple[str, str]]]   # official split -> [(path relative to data_root, class name)]
    class_order: list[str]          # class names in label order
    metadata: list[str]             # metadata files, relative to data_root
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # relative path -> extra columns

    def paths(self, split: str) -> set[str]:
        return {str(self.data_root / p) for p, _ in self.images[split]}

    def n_images(self) -> int:
        return len({p for rows in self.images.values() for p, _ in rows})


@lru_cache(maxsize=None)
def jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def colour_of(k: int) -> tuple[int, int, int]:
    return ((37 * k) % 256, (91 * k + 50) % 256, (173 * k + 100) % 256)


def write_jpeg(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(colour_of(k)))


# ------------------------------------------------------------------------------------ CUB-200-2011

CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross",
               4: "004.Groove_billed_Ani", 101: "101.White_Pelican", 102: "102.Western_Wood_Pewee",
               103: "103.Sayornis", 104: "104.American_Pipit"}
CUB_IMAGES = {1: 3, 2: 2, 3: 4, 4: 2, 101: 3, 102: 2, 103: 2, 104: 3}   # images per class


def write_cub(base: Path, classes: dict[int, str] = CUB_CLASSES) -> Copy:
    data_root = base / "CUB_200_2011"
    images: dict[str, list] = {"train": [], "test": []}
    lines_img, lines_lab = [], []
    image_id = 0
    for cid, name in classes.items():
        for j in range(CUB_IMAGES.get(cid, 0)):
            image_id += 1
            rel = f"{name}/{name.split('.', 1)[1]}_{j + 1:04d}_{image_id}.jpg"
            write_jpeg(data_root / "images" / rel, cid)
            lines_img.append(f"{image_id} {rel}")
            lines_lab.append(f"{image_id} {cid}")
            images["train" if cid <= 100 else "test"].append((f"images/{rel}", name))
    (data_root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (data_root / "image_class_labels.txt").write_text("\n".join(reversed(lines_lab)) + "\n")  # order-free join
    (data_root / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in classes.items()))
    order = [classes[c] for c in sorted(c for c in classes if c <= 100)] + \
            [classes[c] for c in sorted(c for c in classes if c > 100)]
    return Copy(base, data_root, images, order, ["images.txt", "image_class_labels.txt", "classes.txt"])


# ----------------------------------------------------------------------------------------- Cars196

CARS_N_CLASSES = 196  # class_names has an entry per class: a copy without all 196 is incomplete


def cars_name(k: int) -> str:
    return "AM General Hummer SUV 2000" if k == 1 else f"Make{k:03d} Model {k} Sedan {2000 + k % 13}"


def cars_images_per_class(k: int) -> int:
    return 1 + k % 2


def write_cars(base: Path, drop_class: int | None = None) -> Copy:
    """All 196 classes, 1-2 images each, annotations interleaving the classes; ``drop_class``: its
    annotations (not its class_names entry) are left out."""
    from scipy.io import savemat

    base.mkdir(parents=True, exist_ok=True)
    pending = [(k, j) for j in range(2) for k in range(1, CARS_N_CLASSES + 1) if j < cars_images_per_class(k)]
    entries = []
    images: dict[str, list] = {"train": [], "test": []}
    for n, (k, _) in enumerate(pending, 1):
        if k == drop_class:
            continue
        rel = f"car_ims/{n:06d}.jpg"
        write_jpeg(base / rel, k)
        entries.append((rel, k, n % 2))   # the `test` flag: arbitrary, ignored by the DML split
        images["train" if k <= 98 else "test"].append((rel, cars_name(k)))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for i, (rel, k, test) in enumerate(entries):
        ann[0, i] = (np.array([rel]), np.array([[1]], np.uint16), np.array([[2]], np.uint16),
                     np.array([[7]], np.uint16), np.array([[6]], np.uint16),
                     np.array([[k]], np.uint8), np.array([[test]], np.uint8))
    names = np.empty((1, CARS_N_CLASSES), dtype=object)
    for k in range(1, CARS_N_CLASSES + 1):
        names[0, k - 1] = np.array([cars_name(k)])
    savemat(str(base / "cars_annos.mat"), {"annotations": ann, "class_names": names})
    order = [cars_name(k) for k in range(1, CARS_N_CLASSES + 1) if k != drop_class]
    return Copy(base, base, images, order, ["cars_annos.mat"])


# ---------------------------------------------------------------------------- Stanford Online Products

SOP_SUPER = {1: "bicycle_final", 2: "cabinet_final", 3: "chair_final"}
# class id -> (super class id, product id, images); train classes 1..5, test 6..10 (as in the release,
# the test file's class ids follow the training ones)
SOP_CLASSES = {
    1: (1, 111085122871, 2), 2: (1, 111265328556, 3), 3: (2, 121022346513, 2), 4: (3, 131083417623, 2),
    5: (3, 140993839290, 3),
    6: (1, 161072734568, 2), 7: (2, 171108963476, 2), 8: (2, 181080134574, 3), 9: (3, 191195768472, 2),
    10: (3, 200945617563, 2),
}
SOP_TRAIN = (1, 2, 3, 4, 5)


def write_sop(base: Path) -> Copy:
    images: dict[str, list] = {"train": [], "test": []}
    extra = {}
    rows = {"train": [], "test": []}
    image_id = 0
    for cid, (sid, product, n) in SOP_CLASSES.items():
        split = "train" if cid in SOP_TRAIN else "test"
        for j in range(n):
            image_id += 1
            rel = f"{SOP_SUPER[sid]}/{product}_{j}.JPG"
            write_jpeg(base / rel, cid)
            rows[split].append(f"{image_id} {cid} {sid} {rel}")
            images[split].append((rel, str(cid)))
            extra[rel] = {"super_class": str(sid), "super_class_name": SOP_SUPER[sid]}
    header = "image_id class_id super_class_id path\n"
    # rows written in reverse: the manifest order must not depend on the file order
    (base / "Ebay_train.txt").write_text(header + "\n".join(reversed(rows["train"])) + "\n")
    (base / "Ebay_test.txt").write_text(header + "\n".join(rows["test"]) + "\n")
    order = [str(c) for c in SOP_TRAIN] + [str(c) for c in SOP_CLASSES if c not in SOP_TRAIN]
    return Copy(base, base, images, order, ["Ebay_train.txt", "Ebay_test.txt"], extra)


# ------------------------------------------------------------------------------------------ In-Shop

# item -> (folder, [(view, status)]); train items first, then items shared by query and gallery
INSHOP_ITEMS = {
    "id_00000002": ("WOMEN/Dresses", [("02_1_front", "train"), ("02_2_side", "train")]),
    "id_00000007": ("MEN/Denim", [("01_1_front", "train"), ("01_2_side", "train"), ("01_3_back", "train")]),
    "id_00000011": ("WOMEN/Blouses_Shirts", [("03_1_front", "train"), ("03_4_full", "train")]),
    "id_00000015": ("MEN/Jackets_Vests", [("02_1_front", "train"), ("02_3_back", "train")]),
    "id_00000001": ("WOMEN/Dresses", [("02_1_front", "query"), ("02_2_side", "gallery"), ("02_3_back", "gallery")]),
    "id_00000008": ("MEN/Tees_Tanks", [("01_1_front", "query"), ("01_2_side", "query"), ("01_4_full", "gallery")]),
    "id_00000012": ("WOMEN/Skirts", [("04_1_front", "query"), ("04_2_side", "gallery")]),
    "id_00000020": ("WOMEN/Tees_Tanks", [("01_1_front", "gallery"), ("01_7_additional", "query")]),
}


def write_inshop(base: Path) -> Copy:
    images: dict[str, list] = {"train": [], "query": [], "gallery": []}
    lines = []
    for k, (item, (folder, views)) in enumerate(INSHOP_ITEMS.items()):
        for view, status in views:
            rel = f"img/{folder}/{item}/{view}.jpg"
            write_jpeg(base / rel, k)
            lines.append(f"{rel:<56}{item:<15}{status}")   # the release pads its columns with spaces
            images[status].append((rel, item))
    (base / "Eval").mkdir(parents=True, exist_ok=True)
    (base / "Eval/list_eval_partition.txt").write_text(
        f"{len(lines)}\nimage_name item_id evaluation_status\n" + "\n".join(lines) + "\n")
    train = sorted(i for i, (_, v) in INSHOP_ITEMS.items() if v[0][1] == "train")
    test = sorted(i for i, (_, v) in INSHOP_ITEMS.items() if v[0][1] != "train")
    return Copy(base, base, images, train + test, ["Eval/list_eval_partition.txt"])


# ---------------------------------------------------------------------------------------- VehicleID

VEHICLEID_TRAIN = {3: 3, 7: 2, 12: 4, 25: 2, 31: 2}          # vehicle id -> images
VEHICLEID_TEST = {2: 2, 5: 3, 9: 2, 14: 2, 18: 3, 40: 2}
# the test lists overlap, as in the release: each larger list holds the vehicles of the smaller ones
VEHICLEID_LISTS = {"test_800": (2, 5), "test_1600": (2, 5, 9, 14), "test_2400": (2, 5, 9, 14, 18, 40)}


def vehicle_image(vid: int, j: int) -> str:
    return f"{vid * 100 + j:07d}"


def write_vehicleid(base: Path) -> Copy:
    images: dict[str, list] = {s: [] for s in ("train", *VEHICLEID_LISTS)}
    split_dir = base / "train_test_split"
    split_dir.mkdir(parents=True, exist_ok=True)
    for vid, n in {**VEHICLEID_TRAIN, **VEHICLEID_TEST}.items():
        for j in range(n):
            write_jpeg(base / "image" / f"{vehicle_image(vid, j)}.jpg", vid)
    train = [(vehicle_image(v, j), v) for v, n in VEHICLEID_TRAIN.items() for j in range(n)]
    (split_dir / "train_list.txt").write_text("".join(f"{name} {v}\n" for name, v in train))
    images["train"] = [(f"image/{name}.jpg", str(v)) for name, v in train]
    for split, vids in VEHICLEID_LISTS.items():
        rows = [(vehicle_image(v, j), v) for v in vids for j in range(VEHICLEID_TEST[v])]
        (split_dir / f"test_list_{split[5:]}.txt").write_text("".join(f"{name} {v}\n" for name, v in rows))
        images[split] = [(f"image/{name}.jpg", str(v)) for name, v in rows]
    order = [str(v) for v in sorted(VEHICLEID_TRAIN)] + [str(v) for v in sorted(VEHICLEID_TEST)]
    return Copy(base, base, images, order, [f"train_test_split/{f}" for f in
                                            ("train_list.txt", "test_list_800.txt", "test_list_1600.txt",
                                             "test_list_2400.txt")])


WRITERS = {"cub200": write_cub, "cars196": write_cars, "sop": write_sop, "inshop": write_inshop,
           "vehicleid": write_vehicleid}
