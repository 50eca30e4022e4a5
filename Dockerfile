# syntax=docker/dockerfile:1
# Portcullis container image: a multi-stage build, a non-root user, the state
# directory as a volume, and nothing else writable, so it runs with
# `--read-only` (give it `--tmpfs /tmp` for `serve --check` and stdio MCP
# servers). See docs/operations.md.
#
#   docker build -t portcullis .
#   docker run --read-only --tmpfs /tmp -v portcullis:/var/lib/portcullis \
#     -v /etc/portcullis/kek:/run/secrets/kek:ro -e PORTCULLIS_KEK_FILE=/run/secrets/kek \
#     -p 8443:8443 portcullis

FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
# ring needs a C compiler (in the image); nothing is downloaded at build time
# beyond the crates in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis-cli \
 && install -m 0755 target/release/portcullis /usr/local/bin/portcullis

FROM debian:bookworm-slim
# curl: the health check (the admin listener speaks only TLS);
# ca-certificates: upstreams' and the SIEM's certificates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --home-dir /var/lib/portcullis \
      --shell /usr/sbin/nologin portcullis \
 && install -d -m 0700 -o portcullis -g portcullis /var/lib/portcullis \
 && install -d -m 0755 /etc/portcullis
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis
COPY examples/container.toml /etc/portcullis/portcullis.toml
COPY LICENSE /usr/share/doc/portcullis/LICENSE

USER portcullis:portcullis
WORKDIR /var/lib/portcullis
ENV PORTCULLIS_STATE_DIR=/var/lib/portcullis \
    PORTCULLIS_LOG_FORMAT=json
# The database, CA, admin token, audit keys and policies. Back it up with
# `portcullis backup`; the KEK is never in it (PORTCULLIS_KEK_FILE).
VOLUME ["/var/lib/portcullis"]
EXPOSE 8443

# Liveness on the admin listener (loopback in container.toml), verified
# against the state directory's CA.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["curl", "-fsS", "--max-time", "2", "--cacert", "/var/lib/portcullis/ca.crt", "https://127.0.0.1:9443/healthz"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
