"""Classify photos over gRPC with mTLS: `python docs/examples/classify_grpc.py PHOTO... [--target HOST:PORT]`."""

import argparse
from pathlib import Path

import grpc

from gateway.v1 import classifier_pb2, classifier_pb2_grpc

parser = argparse.ArgumentParser()
parser.add_argument("photos", nargs="+", type=Path)
parser.add_argument("--target", default="127.0.0.1:8444")
parser.add_argument("--pki", type=Path, default=Path("pki"))
parser.add_argument("--model", default="mnist")
args = parser.parse_args()

credentials = grpc.ssl_channel_credentials(
    root_certificates=(args.pki / "ca.pem").read_bytes(),
    private_key=(args.pki / "clients" / "app.key").read_bytes(),
    certificate_chain=(args.pki / "clients" / "app.pem").read_bytes(),
)
with grpc.secure_channel(args.target, credentials) as channel:
    classifier = classifier_pb2_grpc.ClassifierStub(channel)
    if len(args.photos) == 1:  # one photo: a unary call
        answer = classifier.Classify(
            classifier_pb2.ClassifyRequest(model=args.model, image=args.photos[0].read_bytes()), timeout=10
        )
        print(args.photos[0], answer.label, f"{answer.probabilities[answer.label]:.3f}")
    else:  # a burst: one stream, answers matched by request_id
        requests = (
            classifier_pb2.ClassifyRequest(model=args.model, image=path.read_bytes(), request_id=str(path))
            for path in args.photos
        )
        for answer in classifier.ClassifyStream(requests, timeout=30):
            outcome = answer.prediction.label if answer.HasField("prediction") else f"error: {answer.error.message}"
            print(answer.request_id, outcome)
