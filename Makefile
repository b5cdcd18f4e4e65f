# Two entry points for a newcomer (see README):
#   make demo   set up .venv and run the main job on the bundled example
#   make test   set up .venv with the test extras (incl. TensorFlow + Keras) and run the test suite
# Needs python3 (>= 3.10) with venv; on Debian/Ubuntu: apt-get install python3-venv make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: Python >= 3.10 needed (found $$($(PYTHON) --version))"; exit 2; }
	@$(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: sudo apt-get install python3-venv"; exit 2; }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dicom,fast,tflite,seg]'
	@touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dicom,fast,seg,tflite,openvino,onnx,train,serve,plot,batch,dev]'
	@touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/bcedge demo --out out/demo

test: $(VENV)/.dev
	BCEDGE_DATA=$${BCEDGE_DATA:-$(abspath ../shared/data)} $(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
