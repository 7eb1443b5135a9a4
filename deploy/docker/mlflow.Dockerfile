# The MLflow tracking server and model registry: Postgres backend store, artifacts proxied to S3-compatible
# object storage (MinIO here). Build: docker build -f deploy/docker/mlflow.Dockerfile -t unlearnops/mlflow:3.17.2 .
# NOT BUILT on the development machine (no Docker daemon there).
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 MLFLOW_DISABLE_TELEMETRY=true
# The same MLflow as the clients (pyproject.toml); psycopg2 for Postgres, boto3 for S3 artifacts.
RUN pip install mlflow==3.17.2 psycopg2-binary boto3
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
