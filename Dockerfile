# A CPU image that serves one trained run: `resnetlab serve` on 0.0.0.0:8000, the run folder
# mounted read-only at /model (docs/deploy.md says how to build, run and probe it).
#
#   docker build -t resnetlab-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/demo:/model:ro" resnetlab-serve
#
# Flags after the image name go to `resnetlab serve` (--processes 2, --api-key ..., --log-format
# json). The exports and the `--backend auto` measurement that a read-only run folder cannot
# hold go to the user's cache folder, /home/app/.cache (a volume there keeps them across
# restarts; without one each start measures again).
FROM python:3.11-slim

# CPU wheels of PyTorch (the default index's Linux wheels bring CUDA, several GB); the versions
# are the tested ones in constraints.txt.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --extra-index-url "$TORCH_INDEX" -c constraints.txt ".[serve,export]" \
    && useradd --create-home --uid 10001 app

USER app
WORKDIR /home/app
EXPOSE 8000
# Liveness: the process answers. The port opens only once the model is loaded and warm, so
# the start period covers loading and the first start's backend measurement.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]
ENTRYPOINT ["resnetlab", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
