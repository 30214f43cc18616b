from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from mvlpt import fewshot
from mvlpt.fewshot import FewShotSplit, num_validation_shots, read_split, sample_few_shot, write_split
from mvlpt.tasks import Sample


def make_pool(num_classes: int = 3, per_class: int = 40) -> list[Sample]:
    return [Sample(f"c{label}/img{index:03d}.png", label) for label in range(num_classes) for index in range(per_class)]


def keys(samples: list[Sample]) -> list[str]:
    return [sample.key for sample in samples]


def test_sample_same_seed_same_selection() -> None:
    first = sample_few_shot(make_pool(), num_classes=3, shots=8, seed=1)
    second = sample_few_shot(make_pool(), num_classes=3, shots=8, seed=1)

    assert first == second


def test_sample_different_seed_differs() -> None:
    first = sample_few_shot(make_pool(), num_classes=3, shots=8, seed=1)
    second = sample_few_shot(make_pool(), num_classes=3, shots=8, seed=2)

    assert keys(first.train + first.val) != keys(second.train + second.val)


def test_sample_input_order_irrelevant() -> None:
    pool = make_pool()
    shuffled = list(pool)
    random.Random(7).shuffle(shuffled)

    in_order = sample_few_shot(pool, num_classes=3, shots=8, seed=3)
    out_of_order = sample_few_shot(shuffled, num_classes=3, shots=8, seed=3)

    assert in_order == out_of_order


def test_sample_exactly_k_per_class() -> None:
    split = sample_few_shot(make_pool(per_class=12), num_classes=3, shots=10, seed=0)
    chosen = split.train + split.val

    assert Counter(sample.label for sample in chosen) == {0: 10, 1: 10, 2: 10}
    assert len(set(chosen)) == 30


def test_sample_picks_from_pool() -> None:
    pool = make_pool()
    split = sample_few_shot(pool, num_classes=3, shots=8, seed=5)

    assert set(split.train + split.val) <= set(pool)


@pytest.mark.parametrize("shots", [1, 2, 3, 4])
def test_validation_below_five_is_train(shots: int) -> None:
    split = sample_few_shot(make_pool(), num_classes=3, shots=shots, seed=0)

    assert split.val == split.train
    assert len(split.train) == 3 * shots


@pytest.mark.parametrize(("shots", "val_per_class"), [(5, 1), (6, 2), (15, 3), (16, 4), (20, 4)])
def test_validation_held_out(shots: int, val_per_class: int) -> None:
    split = sample_few_shot(make_pool(), num_classes=3, shots=shots, seed=0)
    val_counts = Counter(sample.label for sample in split.val)
    train_counts = Counter(sample.label for sample in split.train)

    assert val_counts == {label: val_per_class for label in range(3)}
    assert train_counts == {label: shots - val_per_class for label in range(3)}
    assert not set(split.val) & set(split.train)


def test_validation_takes_first_picks() -> None:
    """The val images are the first ceil(K/5) picks of each class, in selection order."""
    held_out = sample_few_shot(make_pool(), num_classes=3, shots=10, seed=4)
    class_zero = [sample for sample in held_out.val + held_out.train if sample.label == 0]
    single = sample_few_shot(make_pool(num_classes=1), num_classes=1, shots=10, seed=4)

    assert class_zero == single.val + single.train
    assert keys(single.val) == keys(class_zero[:2])


def test_num_validation_shots_table() -> None:
    assert [num_validation_shots(k) for k in (1, 4, 5, 6, 10, 15, 16, 20)] == [0, 0, 1, 2, 2, 3, 4, 4]


def test_sample_too_few_images() -> None:
    pool = make_pool(per_class=10) + [Sample("c3/only.png", 3)]

    with pytest.raises(ValueError, match="class 3 has 1 training image") as raised:
        sample_few_shot(pool, num_classes=4, shots=4, seed=0)

    assert "4 shots were requested" in str(raised.value)
    assert "lower shots to at most 1" in str(raised.value)


def test_sample_empty_class() -> None:
    with pytest.raises(ValueError, match="class 3 has 0 training image"):
        sample_few_shot(make_pool(), num_classes=4, shots=1, seed=0)


@pytest.mark.parametrize("shots", [0, -1])
def test_sample_shots_below_one(shots: int) -> None:
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        sample_few_shot(make_pool(), num_classes=3, shots=shots, seed=0)


def test_sample_label_out_of_range() -> None:
    with pytest.raises(ValueError, match="label 3, outside 0..2"):
        sample_few_shot(make_pool(num_classes=4), num_classes=3, shots=1, seed=0)


def test_split_json_round_trip(tmp_path: Path) -> None:
    split = sample_few_shot(make_pool(), num_classes=3, shots=6, seed=9)
    path = tmp_path / "run" / "fewshot.json"

    write_split(split, path)
    restored = read_split(path)

    assert restored == split
    assert json.loads(path.read_text())["validation_rule"] == fewshot.VALIDATION_RULE


def test_split_json_format() -> None:
    split = FewShotSplit(shots=1, seed=0, train=[Sample("a", 0)], val=[Sample("a", 0)])

    data = split.to_json()

    assert data["shots"] == 1
    assert data["seed"] == 0
    assert data["train"] == [{"key": "a", "label": 0}]
    assert data["val"] == [{"key": "a", "label": 0}]


def test_write_split_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fewshot.json"
    old_split = sample_few_shot(make_pool(), num_classes=3, shots=1, seed=0)
    write_split(old_split, path)
    old_text = path.read_text()

    def failing_dump(*args: object, **kwargs: object) -> None:
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(fewshot.json, "dump", failing_dump)
    new_split = sample_few_shot(make_pool(), num_classes=3, shots=5, seed=1)
    with pytest.raises(RuntimeError, match="serialisation failed"):
        write_split(new_split, path)

    assert path.read_text() == old_text
    assert [entry.name for entry in tmp_path.iterdir()] == ["fewshot.json"]


def test_read_split_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")

    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        read_split(path)


def test_read_split_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"shots": 1, "seed": 0, "train": [{"key": "a"}], "val": []}))

    with pytest.raises(ValueError, match="bad.json.*'train', entry 0"):
        read_split(path)


def test_read_split_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_split(tmp_path / "absent.json")
