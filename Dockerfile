# meshkv: build the binary, then run it on a slim Debian as a non-root user.
#   docker build -t meshkv .
#   docker run -p 50051:50051 -v meshkv-data:/var/lib/meshkv meshkv

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY client client
RUN cargo build --release --locked

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 meshkv \
 && useradd --system --uid 10001 --gid meshkv --home-dir /var/lib/meshkv \
      --shell /usr/sbin/nologin meshkv \
 && mkdir -p /var/lib/meshkv \
 && chown meshkv:meshkv /var/lib/meshkv
COPY --from=build /src/target/release/meshkv /usr/local/bin/meshkv
# meshkv.toml is the image default; node1..3.toml serve docker-compose.yml.
COPY config/ /etc/meshkv/
USER meshkv
VOLUME ["/var/lib/meshkv"]
# gRPC (clients, peers, health, reflection) and Prometheus metrics.
EXPOSE 50051 9090
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 \
  CMD ["meshkv", "health", "--timeout", "2s"]
ENTRYPOINT ["meshkv"]
CMD ["serve", "--config", "/etc/meshkv/meshkv.toml"]
