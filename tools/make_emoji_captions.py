"""Builds an image–caption list from the emoji image packages on the npm registry, at set-up
time (never at run time): the same ~1,900 emoji drawn by four artists as 64x64 PNGs, captioned
from their names, categories and sub-categories in the packages' emoji.json.

    python3 tools/make_emoji_captions.py data/emoji      # needs npm; ~340 MB of downloads

Writes DIR/<artist>/<image>.png and DIR/captions.jsonl, one line per caption:
    {"image": "google/1f600.png", "caption": "...", "split": "train", "category": "...",
     "subcategory": "...", "name": "...", "artist": "google"}
Google, Twitter and Facebook drawings are the training split, each with two captions (one with
its name, one saying only its category and sub-category); Apple's are held out entirely (split
"test", one caption each, with the name). The "Component" category (skin-tone and hair swatches) is left out, leaving nine
categories. Train with `vitkit train --task clip --data captions:DIR/captions.jsonl`.
"""
import hashlib
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile

VERSION = "16.0.0"
TRAIN = ["google", "twitter", "facebook"]
TEST = ["apple"]
PHRASINGS = [
    "{name}, {sub}, {category}",
    "an emoji of {name} ({category})",
    "{name} emoji from {category}, {sub}",
    "{short}: {name}, {category}",
]
# A second caption of each training drawing says only its kind, so that the text tower learns
# what a category or sub-category looks like apart from the emoji's own name.
KIND_PHRASINGS = [
    "an emoji from {category}",
    "{sub}, {category}",
    "a {category} emoji ({sub})",
]


def fetch(artist, workdir):
    """npm pack of the artist's package; returns its emoji.json and a tar handle."""
    name = f"emoji-datasource-{artist}@{VERSION}"
    out = subprocess.run(["npm", "pack", name, "--silent"], cwd=workdir, check=True, capture_output=True, text=True)
    tgz = pathlib.Path(workdir) / out.stdout.strip().splitlines()[-1]
    return tarfile.open(tgz, "r:gz")


def caption(e, artist, phrasings=PHRASINGS):
    # A fixed choice of phrasing per drawing, so the list is the same on every machine.
    k = int(hashlib.sha256(f"{e['unified']}/{artist}".encode()).hexdigest(), 16) % len(phrasings)
    return phrasings[k].format(
        name=e["name"].lower(),
        sub=e["subcategory"].replace("-", " "),
        category=e["category"].lower(),
        short=e["short_name"].replace("_", " "),
    )


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for artist in TRAIN + TEST:
            tar = fetch(artist, tmp)
            emoji = json.load(tar.extractfile("package/emoji.json"))
            (out / artist).mkdir(exist_ok=True)
            kept = 0
            for e in emoji:
                if e["category"] == "Component" or not e.get(f"has_img_{artist}"):
                    continue
                try:
                    png = tar.extractfile(f"package/img/{artist}/64/{e['image']}").read()
                except KeyError:
                    continue
                (out / artist / e["image"]).write_bytes(png)
                captions = [caption(e, artist)]
                if artist in TRAIN:
                    captions.append(caption(e, artist, KIND_PHRASINGS))
                for text in captions:
                    lines.append({
                        "image": f"{artist}/{e['image']}",
                        "caption": text,
                        "split": "test" if artist in TEST else "train",
                        "category": e["category"].lower(),
                        "subcategory": e["subcategory"].replace("-", " "),
                        "name": e["name"].lower(),
                        "artist": artist,
                    })
                kept += 1
            print(f"{artist}: {kept} drawings", file=sys.stderr)
    with open(out / "captions.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    print(out / "captions.jsonl", len(lines), "lines")


if __name__ == "__main__":
    main()
