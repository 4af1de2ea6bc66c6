# The README's entry points: `make demo` (the main job) and `make test-all` (the whole suite, what
# CI runs); `make test` is the quick tier to run after every change.
.PHONY: venv demo test test-all lint

VENV := .venv/bin

venv:
	@bash scripts/bootstrap.sh

# Fetch the bundled model and text, then a real search on them with the embedded defaults
# (SQLite file DB, local Ray with 2 actors): both stages, a small budget, the held-out perplexity
# of the recommended model beside Wanda's and SparseGPT's, the recommended candidate exported.
# `optishear serve` shows it afterwards.
demo: venv
	$(VENV)/optishear assets pull
	$(VENV)/optishear run --model smollm2-135m --sparsity 0.5 --pattern unstructured \
		--workers 2 --population 4 --generations 2 --nsamples 16 --seqlen 128 \
		--metric-space first_order --screen-rungs 1x32 --screen-keep 0.05 --rescore-top 2 \
		--fitness-samples 4 --eval-windows 16

lint: venv
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/lint-imports

# The quick tier (a few minutes on 2 cores): tiny models built in the tests, SQLite, the API and
# the dashboard's static checks; no PostgreSQL, Ray cluster, Chromium or bundled model.
QUICK := not gpu and not slow and not postgres and not ray and not browser and not assets

test: lint
	$(VENV)/python -m pytest -m "$(QUICK)"

# The whole suite: the quick tier plus the real model, PostgreSQL (started when down), Ray (local
# and a two-node cluster) and the dashboard in Chromium (installed when missing, never a
# download). Under CI=true a part that cannot run fails the suite instead of skipping.
test-all: lint
	$(VENV)/python bench/verify.py
	@bash scripts/ensure-postgres.sh
	@bash scripts/ensure-chromium.sh
	$(VENV)/python -m pytest -m "not gpu"
