"""The one pipeline behind every ingress: find the model, preprocess, run, postprocess."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gateway.backends.base import Backend
from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.config import Settings
from gateway.core.errors import NotFound
from gateway.core.types import ClassifyRequest, Prediction
from gateway.preprocess.pipeline import preparation_for, prepare_photo
from gateway.routing.repository import ModelSpec, load_repository

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    backends: dict[str, Backend]
    """Version -> backend running it."""


def _describe(model: LoadedModel) -> dict:
    spec = model.spec
    return {
        "name": spec.name,
        "platform": spec.platform,
        "versions": sorted(model.backends, key=int),
        "default_version": spec.latest_version,
        "max_batch_size": spec.max_batch_size,
        "preprocessing": spec.preprocessing,
        "inputs": [{"name": spec.input.name, "datatype": spec.input.dtype, "shape": [-1, *spec.input.dims]}],
        "outputs": [{"name": spec.output.name, "datatype": spec.output.dtype, "shape": [-1, *spec.output.dims]}],
        "labels": list(spec.labels),
    }


class GatewayService:
    """Owns the loaded models and answers ClassifyRequests; knows nothing of HTTP or gRPC."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.runtime.effective_preprocess_workers, thread_name_prefix="preprocess"
        )

    def load(self) -> None:
        """Load every model in the repository; any inconsistency stops start-up with its reason."""
        specs = load_repository(self._settings.models.repo)
        for spec in specs.values():
            preparation_for(spec)
            backends: dict[str, Backend] = {
                version: OnnxRuntimeBackend(
                    path, spec.input, spec.output, threads=self._settings.runtime.effective_onnx_threads
                )
                for version, path in spec.versions.items()
            }
            self._models[spec.name] = LoadedModel(spec, backends)
            log.info("loaded model %s versions %s", spec.name, ", ".join(sorted(backends, key=int)))

    @property
    def ready(self) -> bool:
        return bool(self._models)

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def _model(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(f"unknown model {name!r}; available: {', '.join(self.model_names())}") from None

    def require_model(self, name: str) -> None:
        """Raise NotFound for an unknown model, so an edge can refuse before reading a body."""
        self._model(name)

    def describe_models(self) -> list[dict]:
        return [_describe(self._models[name]) for name in self.model_names()]

    def describe_model(self, name: str) -> dict:
        return _describe(self._model(name))

    def _backend(self, model: LoadedModel, version: str | None) -> tuple[str, Backend]:
        chosen = version or model.spec.latest_version
        try:
            return chosen, model.backends[chosen]
        except KeyError:
            raise NotFound(
                f"model {model.spec.name!r} has no loaded version {chosen!r}; "
                f"loaded: {', '.join(sorted(model.backends, key=int))}"
            ) from None

    async def classify(self, request: ClassifyRequest) -> Prediction:
        model = self._model(request.model)
        version, backend = self._backend(model, request.version)
        prepared = await asyncio.get_running_loop().run_in_executor(
            self._preprocess_pool,
            lambda: prepare_photo(request.image, model.spec, max_pixels=self._settings.limits.max_image_pixels),
        )
        probabilities = (await backend.infer(prepared.tensor[np.newaxis]))[0]
        best = int(np.argmax(probabilities))
        return Prediction(
            request_id=request.request_id,
            model=model.spec.name,
            version=version,
            label=model.spec.labels[best],
            probabilities={label: float(p) for label, p in zip(model.spec.labels, probabilities, strict=True)},
            latency_ms=(time.perf_counter() - request.received_at) * 1000.0,
        )

    def close(self) -> None:
        for model in self._models.values():
            for backend in model.backends.values():
                backend.close()
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)
