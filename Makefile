# The two entry points of the README: `make demo` (the main job) and `make test`.
.PHONY: venv demo test lint

VENV := .venv/bin

venv:
	@bash scripts/bootstrap.sh

# Fetch the bundled model and text, prune with magnitude and Wanda, print perplexities.
demo: venv
	$(VENV)/optishear assets pull
	$(VENV)/optishear compare --model smollm2-135m --methods magnitude,wanda \
		--sparsity 0.5 --eval-windows 32

lint: venv
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

test: lint
	$(VENV)/python -m pytest -m "not gpu"
