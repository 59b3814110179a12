# sendguard in a container: slim Python, non-root, rules mounted from a volume.
#   docker build -t sendguard .
#   docker run -p 8587:8587 -v $PWD/rules:/etc/sendguard/rules:ro -v sendguard-data:/var/lib/sendguard sendguard
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SENDGUARD_API_HOST=0.0.0.0 \
    SENDGUARD_API_PORT=8587 \
    SENDGUARD_DATA_DIR=/var/lib/sendguard \
    SENDGUARD_RULES=/etc/sendguard/rules/sendguard.toml

WORKDIR /opt/sendguard
COPY pyproject.toml README.md ./
COPY sendguard ./sendguard
COPY rules ./rules
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/sendguard sendguard \
    && mkdir -p /var/lib/sendguard /etc/sendguard/rules \
    && cp -r rules/* /etc/sendguard/rules/ \
    && chown -R sendguard /var/lib/sendguard

USER sendguard
VOLUME ["/var/lib/sendguard", "/etc/sendguard/rules"]
EXPOSE 8587
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8587/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
CMD ["sendguard", "run"]
