"""Tiny copies of the real data sets, written in each one's published layout, file names and columns
(docs/data.md), with invented rows and images of a few pixels. Never real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")


def image(path: Path, seed: int, size: tuple[int, int] = (12, 10), mode: str = "L", spot: bool = False) -> Path:
    """A small noise image (PNG or JPEG by suffix); with `spot`, a bright square in the left half."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = rng.integers(0, 128, shape, dtype=np.uint8)
    if spot:
        pixels[size[1] // 4: size[1] * 3 // 4, : size[0] // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)
    return path


def roco(root: Path) -> Path:
    """`data/{train,validation,test}/radiology/` of razorx89/roco-dataset after fetch.py."""
    for split, first in (("train", 1), ("validation", 100), ("test", 200)):
        folder = root / split / "radiology"
        folder.mkdir(parents=True)
        ids = [f"ROCO_{first + i:05d}" for i in range(6)]
        captions = [f'{roco_id}\t CT of the "chest" case {i} showing a small nodule.' for i, roco_id in enumerate(ids)]
        (folder / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        licences = ["ROCO_ID,PMC_ID,CC"] + [f"{roco_id},PMC{9000 + i}_fig{i}.jpg,CC BY" for i, roco_id in enumerate(ids)]
        (folder / "licences.txt").write_text("\n".join(licences) + "\n")
        for i, roco_id in enumerate(ids):
            # The first image of each folder has the older <PMCID>_<name> file name.
            name = f"PMC{9000 + i}_fig{i}.jpg" if i == 0 else f"{roco_id}.jpg"
            image(folder / "images" / name, first + i, mode="RGB")
    return root


def chestxray14(root: Path) -> Path:
    """The Kaggle mirror's layout: Data_Entry_2017_v2020.csv, split lists, images_00N/images/*.png."""
    findings = ["No Finding", "Effusion", "Cardiomegaly", "Effusion|Mass", "No Finding", "Cardiomegaly",
                "Effusion", "Pleural_Thickening", "No Finding", "Cardiomegaly|Effusion", "Effusion", "Cardiomegaly"]
    lines, names = [NIH_HEADER], []
    for i, labels in enumerate(findings):
        name = f"{1000 + i:08d}_000.png"
        names.append(name)
        lines.append(f"{name},{labels},0,{1000 + i},{30 + i},{'MF'[i % 2]},PA,2500,2048,0.143,0.143")
        image(root / f"images_00{1 + i % 2}" / "images" / name, i, size=(16, 16))
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[:8]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[8:]) + "\n")
    return root


def chexpert(root: Path) -> Path:
    """CheXpert-v1.0-small/: train.csv, valid.csv (Path with the root prefix) and patient folders."""
    base = root / "CheXpert-v1.0-small"
    # (frontal?, No Finding, Cardiomegaly, Edema, Pleural Effusion): 5 competition columns, some uncertain.
    cases = [(True, "1.0", "", "", ""), (True, "", "1.0", "", "0.0"), (True, "", "", "", "1.0"),
             (False, "", "1.0", "", ""), (True, "", "-1.0", "", "1.0"), (True, "", "1.0", "", "1.0"),
             (True, "", "", "", ""), (True, "1.0", "", "0.0", "")]
    for csv_name, folder, first in (("train.csv", "train", 1), ("valid.csv", "valid", 64541)):
        lines = [CHEXPERT_HEADER]
        for i, (frontal, no_finding, cardiomegaly, edema, effusion) in enumerate(cases):
            view = "view1_frontal.jpg" if frontal else "view2_lateral.jpg"
            relative = f"{folder}/patient{first + i:05d}/study1/{view}"
            image(base / relative, first + i, size=(10, 13))
            ap_pa = "AP" if frontal else ""
            kind = "Frontal" if frontal else "Lateral"
            lines.append(f"CheXpert-v1.0-small/{relative},Female,57,{kind},{ap_pa},{no_finding},,{cardiomegaly},"
                         f",,{edema},,,,0.0,{effusion},,,1.0")
        (base / csv_name).write_text("\n".join(lines) + "\n")
    return base


def vqa_rad(root: Path) -> Path:
    """The OSF release: 'VQA_RAD Dataset Public.json' and 'VQA_RAD Image Folder/' (spaces in both)."""
    records = []
    for i in range(10):
        split = "test_freeform" if i >= 7 else ("para" if i % 3 else "freeform")
        closed = i % 2 == 0
        records.append({
            "qid": "0" if i == 0 else i, "phrase_type": split, "qid_linked_id": f"0000-{i}",
            "image_case_url": f"https://medpix.nlm.nih.gov/case?id={i}", "image_name": f"synpic{100 + i % 4}.jpg",
            "image_organ": "CHEST", "evaluation": "given", "question": f" Is there an effusion {i}?",
            "question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL",
            "question_type": "PRES", "answer": ("Yes" if i % 4 else "no") if closed else (3 if i == 1 else "left"),
            "answer_type": ("CLOSED " if i == 2 else "CLOSED") if closed else "OPEN"})
    root.mkdir(parents=True)
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records, indent=4))
    for i in range(4):
        image(root / "VQA_RAD Image Folder" / f"synpic{100 + i}.jpg", i, mode="RGB")
    return root


def slake(root: Path) -> Path:
    """Slake1.0/: train.json, validate.json, test.json (one line, raw UTF-8, en and zh) and imgs/xmlab<N>/."""
    for name, first in (("train.json", 0), ("validate.json", 10), ("test.json", 20)):
        records = []
        for i in range(4):
            img_id = first + i // 2
            for lang, question in (("en", f"Which organ is abnormal {i}?"), ("zh", "哪个器官异常？")):
                record = {"qid": first * 10 + 2 * i + (lang == "zh"), "img_name": f"xmlab{img_id}/source.jpg",
                          "question": question, "answer": "Yes" if i % 2 else "Left Lung", "q_lang": lang,
                          "answer_type": "CLOSED" if i % 2 else "OPEN", "img_id": img_id, "location": "Lung",
                          "modality": "X-Ray", "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"]}
                records.append(dict(reversed(record.items())) if i % 2 else record)  # key order varies
            image(root / "imgs" / f"xmlab{img_id}" / "source.jpg", img_id)
        (root / name).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return root


def csv_source(root: Path, kind: str, rows: int = 8) -> Path:
    """A generic CSV of `kind` with images beside it."""
    text = {"pretrain": ("caption",), "cls_id": ("label",), "cls_ood": ("label",),
            "vqa": ("question", "answer", "answer_type")}[kind]
    splits = {"pretrain": ("train", "val"), "vqa": ("train", "test")}.get(kind, ("train", "test"))
    lines = [",".join(("id", "image", "split", *text))]
    for i in range(rows):
        relative = f"images/{kind}_{i}.png"
        kind_of_case = (i // 2) % 2  # splits alternate with i, classes with i // 2: every split has both
        image(root / relative, i, size=(14, 14), spot=bool(kind_of_case))  # an "effusion" shows as a spot
        values = {"caption": f"frontal chest radiograph number {i}: {('no', 'left')[kind_of_case]} effusion",
                  "label": ("normal", "effusion")[kind_of_case], "question": "is there an effusion?",
                  "answer": ("no", "yes")[kind_of_case], "answer_type": ("closed", "open")[i % 3 == 0]}
        lines.append(",".join((f"{kind}-{i}", relative, splits[i % 2], *(values[c] for c in text))))
    path = root / f"{kind}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def image_folder(root: Path) -> Path:
    """`<split>/<class>/<image>`."""
    for split in ("train", "test"):
        for label in ("normal", "effusion"):
            for i in range(2):
                image(root / split / label / f"{label}{i}.png", i + 10 * (split == "test") + 20 * (label == "effusion"))
    return root
