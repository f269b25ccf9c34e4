# Multi-stage build of the `warren` binary.
#   docker build -t warren .
# Stage 1 compiles with the full Rust toolchain; stage 2 is a slim runtime with the binary,
# the topology files and a shell (and Python) for exec handlers.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin/warren examples tests/it benches \
    && echo 'fn main() {}' > src/bin/warren/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > examples/thumbnails.rs && echo '' > tests/it/main.rs \
    && cargo build --release --locked --bin warren
COPY src ./src
COPY examples ./examples
RUN touch src/bin/warren/main.rs src/lib.rs && cargo build --release --locked --bin warren

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /app warren
WORKDIR /app
COPY --from=build /src/target/release/warren /usr/local/bin/warren
COPY topology ./topology
USER warren
ENTRYPOINT ["warren"]
CMD ["--help"]
