# dnswatch image for the DaemonSet in deploy/kubernetes/dnswatch.yaml.
# Kernel headers come from the node (/lib/modules and /usr/src mounted read-only).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-bpfcc iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dnswatch
COPY pyproject.toml README.md ./
COPY dnswatch ./dnswatch
COPY bpf ./bpf
RUN python3 -m venv --system-site-packages /opt/dnswatch/venv \
 && /opt/dnswatch/venv/bin/pip install --no-cache-dir . \
 && ln -s /opt/dnswatch/venv/bin/dnswatch /usr/local/bin/dnswatch
ENV DNSWATCH_DB=/var/lib/dnswatch/dnswatch.db
ENTRYPOINT ["dnswatch"]
CMD ["watch", "--all-netns", "--responses", "--json"]
