//! The operator of the `windows` and `sessions` examples: count and sum of integer values per
//! key and window, emitted once when the window closes. See examples/windows.rs for the
//! contract.

use serde::Serialize;
use weir::windows::{Added, Aggregator, Emit, WindowSpec, WindowedAggregation};
use weir::{async_trait, Context, Output, ProcessError, Processor, Record, StoreSpec, Timer};

/// Count and sum (an i128 sum never overflows).
pub struct CountSum;

impl Aggregator for CountSum {
    type Value = i64;
    type Agg = (u64, i128);
    fn init(&self) -> (u64, i128) {
        (0, 0)
    }
    fn add(&self, agg: &mut (u64, i128), v: &i64) {
        agg.0 += 1;
        agg.1 += i128::from(*v);
    }
    fn merge(&self, a: (u64, i128), b: (u64, i128)) -> (u64, i128) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// The output value.
#[derive(Serialize)]
struct Emitted<'a> {
    key: &'a str,
    start: i64,
    end: i64,
    count: u64,
    sum: i128,
}

pub struct Windows {
    aggregation: WindowedAggregation<CountSum>,
}

impl Windows {
    /// Windows of `spec`, in the state store `store`.
    pub fn new(store: &str, spec: WindowSpec) -> Self {
        Self {
            aggregation: WindowedAggregation::new(store, spec, Emit::OnClose, CountSum),
        }
    }
}

#[async_trait]
impl Processor for Windows {
    fn stores(&self) -> Vec<StoreSpec> {
        vec![self.aggregation.store()]
    }

    fn timers(&self) -> bool {
        true
    }

    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for record in batch {
            let Some(key) = record
                .key
                .as_deref()
                .filter(|k| std::str::from_utf8(k).is_ok())
            else {
                ctx.poison(record, "the key is missing or not UTF-8 text")?;
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
            // Late records are reported by `add` (dropped and counted, or dead-lettered).
            let _: Added<_> = self.aggregation.add(ctx, record, key, &value)?;
        }
        Ok(())
    }

    async fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let Some(window) = self.aggregation.on_timer(ctx, timer)? else {
            return Ok(());
        };
        let key = String::from_utf8_lossy(&window.key).into_owned();
        let json = serde_json::to_string(&Emitted {
            key: &key,
            start: window.start,
            end: window.end,
            count: window.agg.0,
            sum: window.agg.1,
        })
        .map_err(ProcessError::fatal)?;
        let task = ctx
            .task()
            .ok_or_else(|| ProcessError::fatal("on_timer outside a task"))?;
        let mut output = Output::new(Some(key), json).to_partition(task);
        // The last instant of the window.
        output.timestamp_ms = Some(window.end - 1);
        ctx.emit(output);
        Ok(())
    }
}
