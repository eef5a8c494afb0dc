# syntax=docker/dockerfile:1
#
# One image for both deployables: the SLM (WSGI, gunicorn) and the business app (ASGI, uvicorn), with
# their Celery workers and beats. compose.yaml chooses the process per service; the default command
# is the SLM web. No secret is baked in: every secret reaches a container through its environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the virtualenv with both projects' requirements ----------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements/base.txt requirements/slm.txt requirements/business.txt /tmp/requirements/
RUN pip install -r /tmp/requirements/slm.txt -r /tmp/requirements/business.txt

# --- runtime ------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# openssh-client: the SLM worker reaches managed machines over SSH (Ansible comes with its requirements).
# Not pinned: Debian's security updates replace the exact version within a release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid so volume ownership is stable across rebuilds. The home directory is where ssh and
# ansible keep their per-user state (~/.ssh, ~/.ansible).
RUN groupadd --system --gid 10001 autobot \
    && useradd --system --uid 10001 --gid autobot --home-dir /home/autobot --create-home \
        --shell /usr/sbin/nologin autobot

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    VAR_DIR=/var/lib/autobot

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# What is copied is decided by .dockerignore (an allow-list: the projects, shared_contracts, service_kit,
# ansible, manage_*.py). The code stays owned by root: the app user can read it, not change it.
COPY . /app

# Static files of both projects, collected into VAR_DIR/<project>/static. The production settings are
# used so that the manifest (staticfiles.json) the production storage needs is written; they require
# their environment, so build-only placeholders are given on this line only (nothing is connected to,
# and none of them is kept in the image). compose.yaml's migrate services collect again at start-up,
# because a named volume over VAR_DIR keeps the files of the image it was first created from.
RUN python -m compileall -q /app \
    && mkdir -p /var/lib/autobot/slm /var/lib/autobot/business \
    && for project in slm business; do \
        env SECRET_KEY=build-only-collectstatic-placeholder-not-a-secret \
            DATABASE_URL=postgres://build@build.invalid/build \
            REDIS_URL=redis://build.invalid:6379/0 \
            ALLOWED_HOSTS=build.invalid \
            MASTER_KEYS=build:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
            SLM_API_URL=http://build.invalid \
            SLM_API_TOKEN=build-only-placeholder \
            DJANGO_SETTINGS_MODULE=${project}_project.config.settings.production \
            python manage_${project}.py collectstatic --noinput --verbosity 0 || exit 1; \
    done \
    && chown -R autobot:autobot /var/lib/autobot

# Numeric, so that runtimes can verify it is not root (Kubernetes runAsNonRoot).
USER 10001:10001

EXPOSE 8000 8001

# The SLM web by default; WEB_CONCURRENCY sets the number of gunicorn workers.
ENV DJANGO_SETTINGS_MODULE=slm_project.config.settings.production
CMD ["gunicorn", "slm_project.config.wsgi:application", "--bind", "0.0.0.0:8001", \
     "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
