import shutil
from pathlib import Path

import pytest

from gateway.models.repository import RepositoryError, load_model_spec, load_repository
from tests.conftest import MODEL_REPO, version_one_config


def test_shipped_repository_parses_with_tritons_schema() -> None:
    specs = load_repository(MODEL_REPO)
    mnist = specs["mnist"]
    assert mnist.platform == "onnxruntime_onnx"
    assert mnist.input.dims == (1, 28, 28)
    assert mnist.labels == tuple(str(d) for d in range(10))
    assert mnist.preprocessing == "mnist_digit"
    assert mnist.config.dynamic_batching.max_queue_delay_microseconds > 0
    assert "1" in mnist.versions


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """mnist with its config and version 1 only (the tests add the versions they need)."""
    target = tmp_path / "mnist"
    source = MODEL_REPO / "mnist"

    def ignore(directory: str, names: list[str]) -> set[str]:
        other_versions = {n for n in names if n.isdigit() and n != "1"} if Path(directory) == source else set()
        return other_versions | {n for n in names if n.endswith(".json")}

    shutil.copytree(source, target, ignore=ignore)
    (target / "config.pbtxt").write_text(version_one_config((source / "config.pbtxt").read_text()))
    return target


def edit_config(model_dir: Path, old: str, new: str) -> None:
    config = model_dir / "config.pbtxt"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))


def test_version_policy_latest_and_all(model_copy: Path) -> None:
    for version in ("2", "3"):
        shutil.copytree(model_copy / "1", model_copy / version)
    assert sorted(load_model_spec(model_copy).versions) == ["2", "3"]
    edit_config(model_copy, "latest: { num_versions: 2 }", "all: {}")
    assert sorted(load_model_spec(model_copy).versions) == ["1", "2", "3"]
    edit_config(model_copy, "all: {}", "specific: { versions: [1, 3] }")
    assert sorted(load_model_spec(model_copy).versions) == ["1", "3"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name: "mnist"', 'name: "other"', "must match the directory name"),
        ('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"', "not supported"),
        ("TYPE_FP32", "TYPE_STRING", "only TYPE_FP32"),
        ("dims: [ 10 ]", "dims: [ 11 ]", "10 labels but output 'probabilities' has 11 classes"),
        ("max_batch_size: 64", "max_batch_size: 0", "max_batch_size must be > 0"),
        ('"mnist_digit"', '""', "must name the preprocessing"),
        ("dynamic_batching {", "dynamic_batchin {", "config.pbtxt"),
    ],
)
def test_invalid_configs_name_the_file_and_problem(model_copy: Path, old: str, new: str, message: str) -> None:
    edit_config(model_copy, old, new)
    with pytest.raises(RepositoryError, match=message):
        load_model_spec(model_copy)


def test_missing_model_file_is_reported(model_copy: Path) -> None:
    (model_copy / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match="no version directory contains model.onnx"):
        load_model_spec(model_copy)
