# A Prefect worker for GPU machines: polls the "gpu" work pool and runs the deletion flow's runs with CUDA
# torch and onnxruntime-gpu (the unlearning method gets device "cuda" when torch can use it; ONNX Runtime asks
# for CUDAExecutionProvider only then). Build from the repository root:
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t unlearnops/worker-gpu:0.1.0 .
# NOT BUILT on the development machine (no Docker daemon, no GPU there). Smoke check on a GPU host:
#   docker run --rm --gpus all unlearnops/worker-gpu:0.1.0 python -c \
#     "import torch, onnxruntime as o; print(torch.cuda.is_available(), o.get_available_providers())"
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /opt/unlearnops
# torch from PyPI is the CUDA build on Linux x86_64 (its CUDA runtime comes as nvidia-* wheels);
# onnxruntime-gpu is already a dependency of unlearnops (never install the CPU `onnxruntime` beside it).
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY unlearnops ./unlearnops
COPY pipelines ./pipelines
COPY plugins ./plugins
COPY bench ./bench
COPY deploy ./deploy
RUN pip install . dvc-s3==3.3.0

ENV UNLEARNOPS_WORKSPACE=/workspace \
    PREFECT_WORKER_WEBSERVER_HOST=0.0.0.0 \
    PREFECT_WORKER_WEBSERVER_PORT=8080
WORKDIR /workspace
EXPOSE 8080
# One flow run at a time per worker; the deployment's concurrency limit and the workspace lock keep two
# runs off one workspace anyway.
CMD ["prefect", "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1", "--with-healthcheck"]
