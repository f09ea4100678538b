"""The reference client a mobile app embeds to send photos to the gateway.

```python
from mobile_client import Client

with Client("https://127.0.0.1:8443", ca="pki/ca.pem", cert="pki/clients/app.pem", key="pki/clients/app.key") as client:
    prediction = client.classify("photo.jpg", model="hotdog")
    print(prediction.label, prediction.confidence)
```
"""

from mobile_client.client import AsyncClient, Client
from mobile_client.errors import ClientError, DeadlineExceeded, GatewayUnreachable
from mobile_client.offline import OfflineQueue, Queued, classify_or_queue
from mobile_client.retry import NO_RETRY, RetryPolicy
from mobile_client.values import ModelInfo, Prediction, Upload

__all__ = [
    "NO_RETRY",
    "AsyncClient",
    "Client",
    "ClientError",
    "DeadlineExceeded",
    "GatewayUnreachable",
    "ModelInfo",
    "OfflineQueue",
    "Prediction",
    "Queued",
    "RetryPolicy",
    "Upload",
    "classify_or_queue",
]
