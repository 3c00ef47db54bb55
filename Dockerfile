# syntax=docker/dockerfile:1
# vramguard: one image for every command. ENTRYPOINT is `python -m`, so the first argument
# names the module:
#   docker run IMAGE                          -> python -m webhook   (the default CMD)
#   docker run IMAGE extender --policy ...    -> python -m extender ...
#   docker run IMAGE ops node-agent ...       -> the node agent
#   docker run IMAGE ops status|explain|...   -> the `vramguard` operator commands
# (In Kubernetes the manifests set `command` explicitly; see manifests/base.)
#
# Multi-arch (linux/amd64, linux/arm64) with `docker buildx build --platform ...`: no step
# names an architecture. The project's own wheel is pure Python, so it is built once on the
# builder's native platform ($BUILDPLATFORM, no emulation); the target-platform stage only
# lets pip pick each dependency's binary wheel for that platform (cryptography,
# pydantic-core, grpcio, uvloop, httptools ship manylinux wheels for both), so no stage needs
# a compiler.
#
# The base is pinned by digest: the multi-arch index of python:3.11-slim (3.11.16 on Debian
# trixie) that `docker buildx imagetools inspect python:3.11-slim` showed when it was pinned.
# A build resolves exactly these bytes, on every platform; update the pin (Dependabot's docker
# ecosystem does, .github/dependabot.yml) to take the base's security fixes.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (.dockerignore allow-lists the same paths): every package
# of pyproject's [tool.setuptools.packages.find] (tests/unit/manifests/test_dockerfile.py
# keeps the two lists equal).
COPY pyproject.toml README.md ./
COPY gpumem/ gpumem/
COPY certs/ certs/
COPY webhook/ webhook/
COPY extender/ extender/
COPY kube/ kube/
COPY ops/ ops/
RUN pip wheel --no-deps --wheel-dir /wheels /src

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# The venv has no pip of its own: the builder's pip installs into it (--python), so the
# final image carries no package installer. Without a lock file, dependencies are resolved
# at build time; a constraints file would make builds reproducible.
RUN python -m venv --without-pip /opt/vramguard
COPY --from=wheel /wheels /wheels
# --only-binary: a dependency without a wheel for the target platform fails the build here
# instead of compiling (there is no compiler) or shipping something untested. pip writes the
# bytecode now; at run time the root filesystem is read-only and nothing could cache it.
RUN pip --python /opt/vramguard/bin/python install --only-binary=:all: /wheels/*.whl

FROM ${PYTHON_IMAGE}
# OCI annotations as labels; the release workflow passes the build's facts.
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/vramguard/vramguard
LABEL org.opencontainers.image.title="vramguard" \
      org.opencontainers.image.description="Admission webhook and scheduler extender that keep pods sharing one GPU from running it out of memory" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}"
# MALLOC_ARENA_MAX=2: glibc otherwise gives each thread that allocates (the webhook's watch
# and to_thread workers, the extender's telemetry loop) an arena of its own, up to 8 per core,
# and memory freed in one is not reused by the others: RSS grows with the thread count and
# stays up after a burst. Two arenas bound that; the services are single event loops anyway.
ENV PATH=/opt/vramguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
COPY --from=builder /opt/vramguard /opt/vramguard
# 65532: the conventional "nonroot" uid/gid. Numeric, so Kubernetes' runAsNonRoot can verify
# it without an /etc/passwd entry; nothing in vramguard looks the user up. The node agent's
# DaemonSet overrides it (root without capabilities, to reach the kubelet's socket).
USER 65532:65532
# An empty working directory: `python -m` puts it first on sys.path, so nothing in it can
# shadow a module. With readOnlyRootFilesystem nothing is written outside the volumes the
# manifests mount (/tmp is an emptyDir there; bytecode was compiled at build time).
WORKDIR /tmp
ENTRYPOINT ["python", "-m"]
CMD ["webhook"]
