# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo lint docs test test-fast bench fuzz examples clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	touch $@

install: $(VENV)/.installed

demo: install  ## hash the bundled example models, print codes, distances and neighbours
	$(PY) -m hnn_jax.demo

lint: install  ## ruff over the code (rules in pyproject.toml)
	$(PY) -m ruff check .

docs: install  ## the documentation site from docs/ into build/site; a broken link fails (strict)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -q

test: install  ## the whole test suite (as CI runs it)
	$(PY) -m pytest -q

test-fast: install  ## the quick tier: no slow, integration or fuzz tests (markers in pyproject.toml)
	$(PY) -m pytest -q -m "not slow and not integration and not fuzz"

bench: install  ## benchmark tables (see benchmarks/)
	$(PY) -m pip install -q -c constraints.txt -e ".[bench]"
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_hash.py
	$(PY) benchmarks/bench_index.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_large.py
	$(PY) benchmarks/bench_checkpoint.py --size 1b
	$(PY) benchmarks/bench_invariance.py

fuzz: install  ## a longer fuzzing run than CI's (mutated ONNX models must give a code or an HNNError)
	$(PY) benchmarks/fuzz.py --cases 20000

examples: install  ## rebuild the bundled example models in hnn_jax/examples/
	$(PY) examples/make_examples.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
