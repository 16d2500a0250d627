# The volsnap service image: one image, two roles. docker-compose.yml runs it as the HTTP API (`npm run api`) and
# as the Temporal workers (`npm run worker`); both need qemu-img, the API to create volumes, the workers to take
# and copy snapshots.
#
# Debian (glibc), not Alpine: the Temporal worker loads a prebuilt native core bridge built for linux-gnu, and
# qemu-utils comes from Debian exactly as on a developer machine (scripts/setup.sh). Node is pinned to the
# release the project is developed and tested on.
#
# There is no compile step: the service runs its TypeScript through tsx, which is a runtime dependency (see
# package.json "dependencies"), so the production install (`npm ci --omit=dev`) is all it needs. The workflow
# code is bundled by the worker at start-up, in memory.

ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# ---- deps: production node_modules, from the lockfile only (cached until package*.json change) ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends qemu-utils \
 && rm -rf /var/lib/apt/lists/* \
 && qemu-img --version

# In a container the API must listen beyond its own loopback (the default outside one); the host decides what to
# publish.
ENV NODE_ENV=production \
    VOLSNAP_DATA_DIR=/var/lib/volsnap \
    HOST=0.0.0.0

WORKDIR /app
# Code and dependencies stay owned by root: the service user can read them, not change them.
COPY --from=deps /app/node_modules ./node_modules
COPY . .

# The data dir belongs to the service user. primary/ and secondary/ are where docker-compose.yml mounts the shared
# storage volumes: a fresh named volume takes this ownership from the image. logs/ stays per container.
RUN mkdir -p /var/lib/volsnap/primary /var/lib/volsnap/secondary /var/lib/volsnap/logs \
 && chown -R node:node /var/lib/volsnap

# The unprivileged user the official Node image provides (uid 1000).
USER node
EXPOSE 8080

# `npm run api` without npm: the package.json scripts are `tsx <entry>`, and this is that with node as the process
# the signals reach. Under `npm run` (and the tsx CLI) a SIGTERM from `docker stop` kills npm and never reaches the
# service, so it could not drain. docker-compose.yml runs the workers with worker/worker-main.ts (`npm run worker`).
CMD ["node", "--import", "tsx", "api/main.ts"]
