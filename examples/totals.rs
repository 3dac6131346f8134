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
use serde::{Deserialize, Serialize};
use weir::{async_trait, App, Context, Output, ProcessError, Processor, Record, StoreSpec};

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

/// The aggregate of one key.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Aggregate {
    count: u64,
    sum: i128,
    min: i64,
    max: i64,
}

impl Aggregate {
    fn first(v: i64) -> Self {
        Self {
            count: 1,
            sum: v.into(),
            min: v,
            max: v,
        }
    }

    fn add(self, v: i64) -> Self {
        Self {
            count: self.count + 1,
            sum: self.sum + i128::from(v),
            min: self.min.min(v),
            max: self.max.max(v),
        }
    }
}

/// The output value (an i128 sum never overflows).
#[derive(Serialize)]
struct Emitted<'a> {
    key: &'a str,
    count: u64,
    sum: i128,
    min: i64,
    max: i64,
}

const STORE: &str = "totals";

struct Totals {
    local_only: bool,
}

#[async_trait]
impl Processor for Totals {
    fn stores(&self) -> Vec<StoreSpec> {
        if self.local_only {
            vec![StoreSpec::local_only(STORE)]
        } else {
            vec![StoreSpec::new(STORE)]
        }
    }

    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for record in batch {
            let Some(key) = record.key_str().map(str::to_string) else {
                ctx.poison(record, "the key is not UTF-8 text")?;
                continue;
            };
            let Some(value) = record
                .value_str()
                .and_then(|v| v.trim().parse::<i64>().ok())
            else {
                let text = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                    .into_owned();
                ctx.poison(
                    record,
                    format!("value {text:?} is not a signed 64-bit integer"),
                )?;
                continue;
            };
            let aggregate = {
                let mut store = ctx.store::<String, Aggregate>(STORE)?;
                let aggregate = match store.get(&key)? {
                    Some(a) => a.add(value),
                    None => Aggregate::first(value),
                };
                store.put(&key, &aggregate)?;
                aggregate
            };
            let json = serde_json::to_string(&Emitted {
                key: &key,
                count: aggregate.count,
                sum: aggregate.sum,
                min: aggregate.min,
                max: aggregate.max,
            })
            .map_err(ProcessError::fatal)?;
            ctx.emit(Output::new(Some(key), json).to_partition(record.partition));
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.common.config(&args.poison.keys())?;
    let summary = App::new(config)
        .run(Totals {
            local_only: args.local_only,
        })
        .await?;
    tracing::info!(?summary, "totals stopped");
    Ok(())
}
