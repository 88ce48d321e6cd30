# Two commands for a new user: `make demo` and `make test`. Both create .venv the first time with the
# torch recipe (torch first, from the pinned build; pyproject only sets floors), then install frbench.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev
WORKDIR ?= frbench-work

.PHONY: demo test test-fast venv clean-demo

$(BIN)/frbench: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# MTCNN alignment: facenet-pytorch's metadata pins torch<2.3, so never let pip resolve it
	$(BIN)/python -m pip install -q --no-deps facenet-pytorch
	touch $(BIN)/frbench

venv: $(BIN)/frbench

demo: venv
	$(BIN)/frbench --workdir $(WORKDIR) run configs/demo.yaml
	$(BIN)/frbench --workdir $(WORKDIR) leaderboard
	@echo "as a page: $(BIN)/frbench --workdir $(WORKDIR) leaderboard --format html --output board.html"

test: venv
	FRBENCH_NO_PROGRESS=1 $(BIN)/python -m pytest -q tests

test-fast: venv
	FRBENCH_NO_PROGRESS=1 $(BIN)/python -m pytest -q -m "not slow" tests

clean-demo:
	rm -rf $(WORKDIR)
