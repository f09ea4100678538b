"""The real model servers of the backend tests, for driving the client through a stopped backend."""

from tests.backends.conftest import models_pki, triton_repo  # noqa: F401 - fixtures, used by name
