# unlearnops on CPU: the CLI, `unlearnops serve` (ONNX Runtime falls back to CPU), `unlearnops serve-intake`
# and the one-off workspace bootstrap job. Build from the repository root:
#   docker build -f deploy/docker/app.Dockerfile -t unlearnops/app:0.1.0 .
# NOT BUILT on the development machine (no Docker daemon there); see deploy/README.md.
FROM python:3.11-slim

# git: a workspace is a git repository (dataset versions are commits of data.dvc).
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /opt/unlearnops
# CPU torch first, at the pinned version, so no CUDA wheels are pulled (as in the Makefile).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY unlearnops ./unlearnops
COPY pipelines ./pipelines
COPY plugins ./plugins
COPY bench ./bench
COPY deploy ./deploy
# dvc-s3: the DVC remote lives on S3-compatible object storage (3.3.0 resolved beside dvc 3.67.1).
RUN pip install . dvc-s3==3.3.0
COPY deploy/docker/bootstrap-workspace.sh /usr/local/bin/bootstrap-workspace
RUN chmod 0755 /usr/local/bin/bootstrap-workspace

ENV UNLEARNOPS_WORKSPACE=/workspace
WORKDIR /workspace
EXPOSE 8080 8765
CMD ["unlearnops", "serve", "--host", "0.0.0.0", "--port", "8080"]
