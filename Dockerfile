# Multi-stage build of both services. Targets: `producer`, `gateway`.
#   docker build --target producer -t reddot-producer .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p reddot-producer -p reddot-gateway \
 && mkdir -p /out && cp target/release/reddot-producer target/release/reddot-gateway /out/

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 reddot && mkdir /data && chown reddot /data
WORKDIR /data
USER reddot

FROM runtime AS producer
COPY --from=build /out/reddot-producer /usr/local/bin/reddot-producer
ENV REDDOT_PRODUCER_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["reddot-producer", "healthcheck"]
ENTRYPOINT ["reddot-producer"]

FROM runtime AS gateway
COPY --from=build /out/reddot-gateway /usr/local/bin/reddot-gateway
ENV REDDOT_GATEWAY_ADDR=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s CMD ["reddot-gateway", "healthcheck"]
ENTRYPOINT ["reddot-gateway"]
