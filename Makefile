# One-command set-up on a fresh machine:
#   make demo   install into .venv, fetch the offline data set, run the main job (jax-unlearn demo)
#   make test   install into .venv (with test extras), fetch the data set, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to a matching pair (PyPI torchvision does not import beside a +cpu torch).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
LOCAL_DATA := data/usr/share/datasets/fashion-mnist
DEMO_ARGS ?=

.PHONY: install data test demo clean

$(BIN)/jax-unlearn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/jax-unlearn

# Fashion-MNIST from Debian's dataset-fashion-mnist: system-wide as root, else unpacked into ./data.
data:
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f $(LOCAL_DATA)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  mkdir -p data && cd data && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb . ; \
	fi

# Two workers, whole files each (module fixtures compile once), in collection order (tests/conftest.py puts
# the slowest files first; xdist would otherwise start the files with the most tests first); override e.g.
# PYTEST_ARGS='-n 0'.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder
test: install data
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

demo: install data
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then d=$(FASHION_MNIST_DIR); else d=$(LOCAL_DATA); fi; \
	  $(BIN)/jax-unlearn demo --data-dir $$d $(DEMO_ARGS)

clean:
	rm -rf $(VENV) *.egg-info
