//! # totals — a stateful running aggregate per key, exactly once
//!
//! Input: key = UTF-8 account name, value = a signed 64-bit integer as decimal text. For every
//! input record, `totals` emits to `--output-topic` — same key, same partition number — the JSON
//! `{"key":..,"count":..,"sum":..,"min":..,"max":..}`: the running aggregate of that key
//! *including* this record.
//!
//! The aggregates live in the RocksDB state store `totals` of each task (input partition),
//! backed by the compacted changelog topic `{application.id}-totals-changelog`, which weir
//! creates. State writes, outputs and input offsets commit in one Kafka transaction; after a
//! `kill -9` the state recovers in step with the offsets (a pending commit is rolled forward or
//! back by asking Kafka whether it committed), so every aggregate counts every record exactly
//! once. Delete the state directory and the state is restored from the changelog.
//!
//! A value that does not parse follows `poison.policy`; with `--dead-letter-topic` it goes
//! there and does not change the aggregate.
//!
//! ```text
//! cargo run --example totals -- --bootstrap-servers localhost:9092 --application-id totals \
//!     --input-topic payments --output-topic totals --state-dir /var/lib/weir
//! ```

mod common;

use clap::Parser;
use common::totals::Totals;
use weir::App;

#[derive(Parser, Debug)]
#[command(about = "Running count/sum/min/max per key, with RocksDB state, exactly once")]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,
    #[command(flatten)]
    poison: common::PoisonArgs,
    /// Keep the store local-only (no changelog): faster commits, but state does not move
    /// between instances. Used by the restart benchmark to compare.
    #[arg(long)]
    local_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.common.config(&args.poison.keys())?;
    let summary = App::new(config)
        .on_restore_progress(weir::progress::restore_bars())
        .run(Totals {
            local_only: args.local_only,
        })
        .await?;
    tracing::info!(?summary, "totals stopped");
    Ok(())
}
