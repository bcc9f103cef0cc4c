# fracture dashboard: `docker build -t fracture . && docker run -p 8501:8501 fracture`
#
# The image serves the Streamlit dashboard with the model in models/ (models/default is the
# shipped FracAtlas model). The ImageNet weights are fetched at build time (needs network);
# build with `--build-arg FETCH_WEIGHTS=0` to skip that and mount a weights file instead:
#   docker run -p 8501:8501 -v /path/resnet50_imagenet_notop.h5:/weights.h5:ro \
#              -e FRACTURE_IMAGENET_WEIGHTS=/weights.h5 fracture
# Set an admin password for anything reachable by others (training, promotion, rollback):
#   docker run -p 8501:8501 -e FRACTURE_ADMIN_PASSWORD=... fracture
# Keep trained runs and promoted models across containers with *named* volumes, which start
# as a copy of the image's folders (a bind mount on /app/models would hide models/default):
#   docker run -p 8501:8501 -v fracture-runs:/app/runs -v fracture-models:/app/models fracture
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    FRACTURE_CACHE_DIR=/app/cache \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none

WORKDIR /app
RUN useradd --create-home --uid 1000 fracture

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
RUN mkdir -p /app/cache /app/runs /app/data /app/models /app/dicom-spool \
    && chown -R fracture:fracture /app
USER fracture

ARG FETCH_WEIGHTS=1
# Resolve, verify and cache the ResNet-50 ImageNet weights now, so the first visitor does
# not wait for a 94 MB download (and an offline container still works).
RUN if [ "$FETCH_WEIGHTS" = "1" ]; then python -m fracture weights; fi

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).status != 200)"]
CMD ["python", "-m", "streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true"]
