# One image for the web process and the workers.
#   docker build -t al-ml-backend .                       # CPU torch (web, CPU workers)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t al-ml-backend:gpu .
# TORCH_INDEX picks the torch wheel: .../whl/cpu (small, CPU only) or a CUDA index such as
# .../whl/cu128 for GPU hosts (needs the NVIDIA container toolkit at run time).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_DIR=/data \
    HOST=0.0.0.0 \
    PORT=9090

WORKDIR /app
COPY requirements.txt .
# torch first, from the chosen index; the pinned requirements then find it satisfied.
RUN pip install --index-url "${TORCH_INDEX}" "torch==$(grep -E '^torch==' requirements.txt | cut -d= -f3)" \
 && pip install -r requirements.txt

COPY backend ./backend
COPY workers ./workers

RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
USER app
VOLUME ["/data"]
EXPOSE 9090

# Web (with REDIS_URL set, `python -m backend` runs only gunicorn): the default command.
# Worker: `python -m workers`.
CMD ["python", "-m", "backend"]
