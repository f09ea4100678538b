"""The embedded default: ONNX Runtime in the gateway's own process."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.models.repository import RepositoryError, TensorSpec
from gateway.monitoring.tracing import TRACING


def _check_tensor(model_path: Path, kind: str, actual: ort.NodeArg, expected: TensorSpec) -> None:
    """The ONNX file must agree with config.pbtxt, or the gateway refuses to start."""
    if actual.name != expected.name:
        raise RepositoryError(f"{model_path}: {kind} is named {actual.name!r}, config.pbtxt says {expected.name!r}")
    item_shape = tuple(actual.shape[1:])
    if item_shape != expected.dims:
        raise RepositoryError(
            f"{model_path}: {kind} {actual.name!r} has item shape {list(item_shape)}, "
            f"config.pbtxt says {list(expected.dims)}"
        )


class OnnxRuntimeBackend:
    """One InferenceSession; runs happen on a dedicated thread so the event loop never blocks."""

    def __init__(self, model_path: Path, input_spec: TensorSpec, output_spec: TensorSpec, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # ORT's worker threads busy-wait for work by default; in a gateway they share the cores with
        # decoding and TLS, and spinning starves them (measured: batch execution 11.9 ms -> see docs).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for broken files
            raise RepositoryError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise RepositoryError(f"{model_path}: expected one input and one output")
        _check_tensor(model_path, "input", inputs[0], input_spec)
        _check_tensor(model_path, "output", outputs[0], output_spec)
        self._input_name = input_spec.name
        self._output_name = output_spec.name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{model_path.parent.name}")

    def infer_sync(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        with TRACING.span("backend onnxruntime"):
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.infer_sync, batch)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
