import asyncio
import json

import numpy as np
import redis

from gateway.config import PredictionLogSettings
from gateway.monitoring.features import DIGIT_FEATURES, PHOTO_FEATURES, SOURCE_FEATURES
from gateway.monitoring.prediction_log import stream_name
from gateway.monitoring.stores import INPUT_KEY, add_features, open_prediction_stores


def test_features_replace_the_input_row() -> None:
    row = np.zeros((1, 28, 28), np.float32)
    row[0, 4:24, 12:15] = 1.0
    record = add_features({"preprocessing": "mnist_digit", INPUT_KEY: row, "label": "1"})
    assert INPUT_KEY not in record
    assert set(record["features"]) == set(DIGIT_FEATURES)
    assert record["features"]["bbox_height"] == 20.0 and record["features"]["bbox_width"] == 3.0


def test_colour_photo_records_get_colour_and_upload_size_features() -> None:
    row = np.zeros((3, 224, 224), np.float32)
    row[0] = 1.0
    record = add_features(
        {"preprocessing": "imagenet_rgb", "source_size": [4000, 3000], INPUT_KEY: row, "label": "hotdog"}
    )
    assert set(record["features"]) == set(PHOTO_FEATURES) | set(SOURCE_FEATURES)
    assert record["features"]["red_mean"] == 1.0 and record["features"]["saturation"] == 1.0
    assert record["features"]["megapixels"] == 12.0


def test_colour_tensor_records_have_no_size_features() -> None:
    record = add_features({"preprocessing": "imagenet_rgb", "source_size": None, INPUT_KEY: np.ones((3, 8, 8))})
    assert set(record["features"]) == set(PHOTO_FEATURES)


def test_the_embedded_redis_keeps_the_log_across_a_restart(tmp_path) -> None:
    settings = PredictionLogSettings(embedded_db=tmp_path / "redis" / "gateway.db", spool_dir=tmp_path / "spool")

    async def write_one() -> None:
        stores = open_prediction_stores(settings)
        stores.log.start()
        stores.log.record({"model": "mnist", "request_id": "kept", "preprocessing": "none"})
        await stores.log.flush()
        await stores.aclose()

    asyncio.run(write_one())
    embedded = open_prediction_stores(settings).embedded
    try:
        entries = redis.Redis(unix_socket_path=embedded.socket_path).xrange(stream_name("mnist"))
        record = json.loads(entries[0][1][b"record"])
        assert len(entries) == 1 and record.pop("log_id")
        assert record == {"model": "mnist", "request_id": "kept", "preprocessing": "none"}
    finally:
        embedded.close()
