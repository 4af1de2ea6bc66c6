# OptiShear image: the library, CLI, REST service and Ray workers.
# PYTHON_IMAGE: another Python 3.11 base (deploy/local builds one from Debian packages).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 OPTISHEAR_CACHE=/cache
# CPU torch from PyTorch's index keeps the image small; use the default index for CUDA builds.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0"
COPY pyproject.toml README.md alembic.ini ./
COPY optishear ./optishear
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
# Editable: service/db.py finds migrations/ beside the service package (/app), which a
# regular install into site-packages would leave behind.
RUN pip install -e ".[service,workers,tasks]"
VOLUME ["/cache", "/out"]
ENTRYPOINT ["optishear"]
CMD ["--help"]
