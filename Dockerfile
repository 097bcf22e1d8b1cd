# syntax=docker/dockerfile:1.7
# One image for every Lastro process: `lastro serve <identity|accounts|...|operator>`.
# Multi-stage: dependencies are built in `build` and only the virtualenv is copied into
# `runtime`, which runs as an unprivileged user and needs no writable path but /tmp
# (the chart mounts an emptyDir there and sets readOnlyRootFilesystem).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lastro
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p services/lastro operator/lastro_operator \
 && touch services/lastro/__init__.py operator/lastro_operator/__init__.py \
 && /opt/lastro/bin/pip install . \
 && /opt/lastro/bin/pip uninstall --yes lastro
COPY services ./services
COPY operator ./operator
RUN /opt/lastro/bin/pip install --no-deps . \
 && /opt/lastro/bin/python -m compileall -q /opt/lastro

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 lastro \
 && useradd --system --uid 10001 --gid lastro --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin lastro
COPY --from=build /opt/lastro /opt/lastro
ENV PATH=/opt/lastro/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LASTRO_ENV=prod \
    LASTRO_DEV_DIR=/tmp/lastro \
    LASTRO_BIND_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 7001 7002 7003 7004 7005
ENTRYPOINT ["lastro"]
CMD ["--help"]
