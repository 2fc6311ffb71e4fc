# The kpimon worker (and the rest of the kpimon CLI): docker build -t kpimon .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 -p 6066:6066 \
#     -v $PWD/kpimon.yaml:/etc/kpimon/kpimon.yaml:ro kpimon worker --config /etc/kpimon/kpimon.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# pip install . needs the project metadata and the four packages (see .dockerignore).
COPY pyproject.toml README.md ./
COPY kpi_core ./kpi_core
COPY streams ./streams
COPY alerts ./alerts
COPY kpimon ./kpimon
RUN pip install . && rm -rf /src

# A fixed, unprivileged uid: Kubernetes' runAsNonRoot can verify a numeric USER.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kpimon --create-home kpimon
USER 10001:10001
WORKDIR /var/lib/kpimon
# Faust's local files; state itself lives in Kafka changelog topics.
ENV KPIMON_DATA_DIR=/var/lib/kpimon/data

EXPOSE 6066
# /health answers 503 once the worker is unhealthy; urlopen raises on any error status.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:6066/health', timeout=4)"]

ENTRYPOINT ["kpimon"]
CMD ["worker"]
