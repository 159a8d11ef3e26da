# graphcache: `make demo` sets everything up and runs the demo; `make test` runs lint, types and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.graphcache-installed
# what `graphcache tune --reference --budget 'acc_drop<=1' --budget 'psnr>=30'` chose (README, docs/tune.md)
TUNED := fora{interval=8,warmup=2,forecast=taylor:1,forecast_from=10}

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" "diffusers==0.42.1"
	$(PY) -m pip install -q -e ".[dev,onnx]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/graphcache bench --policy fora --policy '$(TUNED)' --samples 100 --out reports/bench

test: setup
	$(VENV)/bin/ruff check graphcache passes export tests examples benchmarks
	$(VENV)/bin/mypy graphcache passes export
	$(PY) -m pytest -q -n auto --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: setup
	$(PY) benchmarks/dit_cpu.py

clean:
	rm -rf $(VENV) graphcache_dump reports
