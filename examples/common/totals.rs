//! The `totals` operator (a running count/sum/min/max per key in a RocksDB store), shared by
//! the `totals` example and the demo. See examples/totals.rs for what it computes.

use serde::{Deserialize, Serialize};
use weir::{async_trait, Context, Output, ProcessError, Processor, Record, StoreSpec};

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

pub const STORE: &str = "totals";

pub struct Totals {
    /// Keep the store local-only (no changelog).
    pub local_only: bool,
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
            ctx.emit(
                Output::new(Some(key), json)
                    .to_partition(record.partition)
                    .for_input(record),
            );
        }
        Ok(())
    }
}
