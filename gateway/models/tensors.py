"""The one dtype table and the one tensor metadata builder, for every surface and backend.

A model's tensors are declared in config.pbtxt and held as numpy dtype names
(``TensorSpec.dtype``); the wire protocols name the same types differently: KServe v2
datatypes (``FP32``) and TensorFlow ``DataType`` enum names (``DT_FLOAT``). TensorFlow's
names are used (not its enum numbers) so this module needs no TF Serving messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.models.repository import TensorSpec


@dataclass(frozen=True)
class DType:
    numpy: str
    kserve: str
    tensorflow: str


DTYPES = (
    DType("float32", "FP32", "DT_FLOAT"),
    DType("float64", "FP64", "DT_DOUBLE"),
    DType("int32", "INT32", "DT_INT32"),
    DType("int64", "INT64", "DT_INT64"),
)
KSERVE_BY_NUMPY = {d.numpy: d.kserve for d in DTYPES}
KSERVE_BY_TENSORFLOW = {d.tensorflow: d.kserve for d in DTYPES}
TENSORFLOW_BY_KSERVE = {d.kserve: d.tensorflow for d in DTYPES}


def kserve_datatype(tensor: TensorSpec) -> str:
    """The KServe v2 datatype of a configured tensor (FP32 for float32)."""
    return KSERVE_BY_NUMPY.get(tensor.dtype, tensor.dtype)


def tensor_metadata(tensor: TensorSpec) -> dict:
    """``{"name", "datatype", "shape"}`` as KServe v2 metadata states it, the batch dimension as -1."""
    return {"name": tensor.name, "datatype": kserve_datatype(tensor), "shape": [-1, *tensor.dims]}
