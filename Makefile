# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   — runs the main job on an embedded default (no services; CPU is fine)
#   make test   — runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision are pinned here only to the releases this machine serves from its disk;
# the package itself declares ranges (pyproject.toml).
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install proto clean compose-smoke

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ctp-datagen demo --out out/demo
	$(VENV)/bin/ctp-train pretrain --config tiny_cpu data.videos=[out/demo-videos] run.out_dir=out/demo/pretrain --overwrite

test: install  # lint, format and types first (seconds), then the suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra

compose-smoke: install  # the Compose stack for real on this host's Docker, CPU mode (minutes; not part of `make test`)
	$(PY) deploy/compose_smoke.py

proto: install  # regenerate protos/*_pb2*.py after editing protos/datagen.proto
	$(PY) -m protos.build

.PHONY: multinode-smoke
multinode-smoke: install  # the trainer Job losing nodes, in containers on this host's Docker (minutes; not in `make test`)
	$(PY) deploy/multinode_smoke.py

clean:
	rm -rf $(VENV) out
