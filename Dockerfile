# dnswatch node image, for the DaemonSet in deploy/kubernetes/dnswatch.yaml. Build it with scripts/image:
# it builds the wheels Debian lacks (dnswatch's own, publicsuffixlist) on the host into build/image/wheels,
# the build context, and makes a Debian base image locally when none can be pulled. The RUN steps reach
# nothing but the Debian package archive.
#   podman build --isolation=chroot --build-arg BASE=... -f Dockerfile build/image   (what scripts/image runs)
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# Python dependencies from Debian (checked against pyproject's pins below), bcc (python3-bpfcc), and a
# kernel header tree of Debian's own kernel: a socket filter uses only stable uapi headers, so one tree
# compiles it for any node kernel. The two header packages are unpacked, not installed (installing them
# pulls in gcc), and merged into one tree (bcc's BCC_KERNEL_SOURCE takes a single directory).
RUN set -eu; \
    apt-get update -q; \
    apt-get install -y -q --no-install-recommends python3 python3-venv python3-bpfcc iproute2 \
        python3-click python3-dnslib sqlite-utils python3-tabulate python3-rich python3-prometheus-client; \
    arch=$(dpkg --print-architecture); \
    hdr=$(apt-cache depends "linux-headers-$arch" | sed -n 's/^ *Depends: \(linux-headers-[^ ]*\)$/\1/p' | head -n 1); \
    common=$(apt-cache depends "$hdr" | sed -n 's/^ *Depends: \(linux-headers-[^ ]*-common\)$/\1/p' | head -n 1); \
    mkdir -p /tmp/kh /opt/dnswatch/kernel-headers; chown _apt /tmp/kh; cd /tmp/kh; \
    apt-get download -q "$hdr" "$common"; \
    for deb in ./*.deb; do dpkg-deb -x "$deb" /tmp/kh/root; done; \
    cp -a "/tmp/kh/root/usr/src/$common/." /opt/dnswatch/kernel-headers/; \
    cp -a "/tmp/kh/root/usr/src/$hdr/." /opt/dnswatch/kernel-headers/; \
    cd /opt/dnswatch/kernel-headers; \
    rm -f scripts tools; \
    for d in arch/*; do [ -e "/tmp/kh/root/usr/src/$hdr/$d" ] || rm -rf "$d"; done; \
    test -f include/linux/kconfig.h -a -f include/generated/autoconf.h; \
    cd /; rm -rf /tmp/kh; apt-get clean; rm -rf /var/lib/apt/lists/*
COPY wheels /tmp/wheels
# --no-deps: Debian's sqlite-utils metadata names click-default-group-wheel, which Debian ships as
# python3-click-default-group; so pip's resolver is skipped and dnswatch's own pins are checked here instead
ARG check_pins="from importlib.metadata import requires, version; \
from pip._vendor.packaging.requirements import Requirement; \
bad = [f'{r} (have {version(r.name)})' for r in map(Requirement, requires('dnswatch')) \
       if not r.marker and not r.specifier.contains(version(r.name), prereleases=True)]; \
assert not bad, 'Debian versions below the pins: ' + ', '.join(bad)"
RUN set -eu; \
    python3 -m venv --system-site-packages /opt/dnswatch/venv; \
    /opt/dnswatch/venv/bin/pip install -q --no-index --no-cache-dir --no-deps /tmp/wheels/*.whl; \
    /opt/dnswatch/venv/bin/python -c "$check_pins"; \
    ln -s /opt/dnswatch/venv/bin/dnswatch /usr/local/bin/dnswatch; \
    mkdir -p /var/lib/dnswatch; \
    rm -rf /tmp/wheels; \
    python3 -c 'import bcc'; dnswatch --help >/dev/null
# used when the node has no headers at /lib/modules/$(uname -r)/build (dnswatch doctor says which)
ENV DNSWATCH_KERNEL_HEADERS=/opt/dnswatch/kernel-headers
ENV DNSWATCH_DB=/var/lib/dnswatch/dnswatch.db
# no compiler here: the hot modules run from their .py (dnswatch doctor: "compiled path: pure Python")
ENV DNSWATCH_PURE_PYTHON=1
ENTRYPOINT ["dnswatch"]
CMD ["watch", "--all-netns", "--responses", "--json"]
