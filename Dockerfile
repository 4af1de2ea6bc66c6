# OptiShear image: the library and CLI (the service and workers join it in later releases).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 OPTISHEAR_CACHE=/cache
# CPU torch from PyTorch's index keeps the image small; use the default index for CUDA builds.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY optishear ./optishear
COPY service ./service
COPY workers ./workers
RUN pip install ".[service,workers]"
VOLUME ["/cache", "/out"]
ENTRYPOINT ["optishear"]
CMD ["--help"]
