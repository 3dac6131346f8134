# weir's everyday commands. `just --list` shows them all.

# Build everything (libraries, examples, tests).
build:
    cargo build --workspace --all-targets

# The whole test suite against a real Kafka broker (the README's test command: the set-up step,
# then `cargo test --workspace`).
test *ARGS:
    cargo xtask test {{ARGS}}

# The exactly-once demo: a local broker, a copy pipeline, SIGKILLs, a record-by-record check
# (the README's demo command).
demo *ARGS:
    cargo xtask demo {{ARGS}}

# Start a Kafka broker (the test kit's launcher) and print its bootstrap address;
# e.g. `just kafka --topic payments:3 --topic totals:3 --payments payments:50000`.
kafka *ARGS:
    cargo run -q -p weir-testkit --bin weir-kafka -- {{ARGS}}

# Formatting and lints, as CI wants them.
lint:
    cargo fmt --all --check
    cargo clippy --all-targets -- -D warnings

# weir vs the raw rdkafka ceiling vs Kafka Streams on one local broker (a program, not a test;
# needs Java 17 and Maven for the Kafka Streams contender, or pass --skip-kstreams).
bench *ARGS:
    cargo build --release --examples
    cargo run --release --example bench -- {{ARGS}}

# Throughput of `mirror` in-process under both guarantees (a program, not a test).
throughput *ARGS:
    cargo run --release --example throughput -- {{ARGS}}

# Long kill -9 runs outside CI: mirror and totals over many seeds (default 20; `--seed N`
# reproduces one), then broker bounces on a 3-broker cluster (a program, not a test).
chaos *ARGS:
    cargo build --examples
    cargo run --example chaos -- {{ARGS}}

# What CI runs on a fresh machine.
ci:
    bash .ci/run
