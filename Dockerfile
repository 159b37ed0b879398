# The image deploy/kubernetes/hoard.yaml runs (`hoard:latest`). Two stages: the same release build as
# ./scripts/setup.sh and ./scripts/demo.sh take (libclang, a C++ compiler, cargo, --locked), then a slim
# Debian runtime with only the binary, a non-root user (uid 10001, as the manifest's securityContext
# asks) and the config directory. How to build and load it: deploy/README.md.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# setup.sh installs what a fresh Debian lacks for the build (libclang-dev, g++, make).
RUN ./scripts/setup.sh \
 && CARGO_TARGET_DIR=/src/target cargo build --release --locked --bin hoard

FROM debian:bookworm-slim
# envsubst (gettext-base) fills the volume server's config template in the manifest; ca-certificates for
# TLS to peers signed by a public CA.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gettext-base \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 hoard \
 && useradd --system --uid 10001 --gid hoard --home-dir /var/lib/hoard --shell /usr/sbin/nologin hoard \
 && mkdir -p /etc/hoard /var/lib/hoard \
 && chown hoard:hoard /var/lib/hoard
COPY --from=build /src/target/release/hoard /usr/local/bin/hoard
COPY deploy/config/ /etc/hoard/
USER hoard
WORKDIR /var/lib/hoard
# Client gRPC, meta, volume; admin HTTP of each role.
EXPOSE 7700 7701 7702 7780 7781 7782
ENTRYPOINT ["hoard"]
CMD ["--help"]
