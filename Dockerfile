# Meta-IADA pipeline: `docker build -t meta-iada . && docker run --rm -v "$PWD/data:/app/data" meta-iada`
# Same pins as the Makefile; runs `dvc repro` as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.* make=4.* \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 app
WORKDIR /app

# torch first, exactly pinned (a loose pin pulls another multi-GB build).
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY requirements.txt pyproject.toml README.md ./
RUN pip install -r requirements.txt

COPY pipeline/ pipeline/
COPY params.yaml dvc.yaml Makefile ./
COPY params/ params/
COPY .dvc/config .dvc/config
COPY .dvcignore .dvcignore
RUN pip install --no-deps --no-build-isolation -e . \
    && git init --quiet \
    && chown -R app:app /app

USER 1000:1000
CMD ["dvc", "repro"]
