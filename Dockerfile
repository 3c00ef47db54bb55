# syntax=docker/dockerfile:1
# vramguard: one image for both services.
#   docker run IMAGE                      -> python -m webhook   (the default CMD)
#   docker run IMAGE extender --policy .. -> python -m extender ...
# (In Kubernetes the manifests set `command` explicitly; see manifests/base.)
#
# Two stages on the same base image, so the virtual environment's interpreter symlink
# resolves in the final stage. Every dependency ships binary wheels for this Python
# (cryptography, pydantic-core), so neither stage needs a compiler. Pin the base by digest
# in CI (python:3.11-slim@sha256:...) for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# The venv has no pip of its own: the builder's pip installs into it (--python), so the
# final image carries no package installer.
RUN python -m venv --without-pip /opt/vramguard
WORKDIR /src
# Only what the wheel is built from (.dockerignore allow-lists the same paths). Without a
# lock file, dependencies are resolved at build time; a constraints file would make builds
# reproducible and let them be cached in a layer of their own.
COPY pyproject.toml README.md ./
COPY gpumem/ gpumem/
COPY certs/ certs/
COPY webhook/ webhook/
COPY extender/ extender/
COPY kube/ kube/
COPY ops/ ops/
# A regular (non-editable) install: the project is built into a wheel and installed with
# its dependencies. pip writes the bytecode now; at run time the root filesystem is
# read-only and nothing could cache it.
RUN pip --python /opt/vramguard/bin/python install /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="vramguard" \
      org.opencontainers.image.description="Admission webhook and scheduler extender that keep pods sharing one GPU from running it out of memory" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/vramguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/vramguard /opt/vramguard
# 65532: the conventional "nonroot" uid/gid. Numeric, so Kubernetes' runAsNonRoot can verify
# it without an /etc/passwd entry; nothing in vramguard looks the user up.
USER 65532:65532
# An empty working directory: `python -m` puts it first on sys.path, so nothing in it can
# shadow a module. (/tmp is an emptyDir in the manifests.)
WORKDIR /tmp
ENTRYPOINT ["python", "-m"]
CMD ["webhook"]
