//! # etl — parse, filter, enrich; and what happens to records that do not parse
//!
//! Input: JSON orders, e.g. `{"order_id":"o-1","customer":"ada","amount_cents":1250,"country":"DE"}`.
//! For each order with `amount_cents >= --min-amount-cents` (default 1) it emits, to the same
//! partition number of `--output-topic` with key `order_id`, the order enriched with
//! `"region"` (EU, NA, APAC or OTHER, from `country`) and `"amount"` (`"12.50"`). Orders below
//! the minimum are filtered out (no output, offset still committed).
//!
//! A record that is not such an order — not JSON, or a field missing or of the wrong type — is
//! *poison*, and `poison.policy` decides (see `docs/guarantees.md`):
//!
//! - `fail` (default): stop; nothing at or after the record is committed; the error names the
//!   topic, partition and offset.
//! - `skip`: log, count, go on.
//! - `dead_letter`: the original record, plus `weir.error.*` headers saying why and where from,
//!   goes to `--dead-letter-topic` in the same transaction as the outputs. Giving
//!   `--dead-letter-topic` selects this policy unless `--poison-policy` says otherwise.
//!
//! ```text
//! cargo run --example etl -- --bootstrap-servers localhost:9092 --application-id etl \
//!     --input-topic orders --output-topic orders-enriched --dead-letter-topic orders-dlq
//! ```
//!
//! Exactly-once like every weir pipeline; runs until SIGINT/SIGTERM.

mod common;

use clap::Parser;
use serde::{Deserialize, Serialize};
use weir::{async_trait, App, Context, Output, ProcessError, Processor, Record};

#[derive(Parser, Debug)]
#[command(about = "Parses, filters and enriches JSON orders; poison records follow poison.policy")]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,
    #[command(flatten)]
    poison: common::PoisonArgs,
    /// Orders below this amount are filtered out.
    #[arg(long, default_value_t = 1)]
    min_amount_cents: i64,
}

#[derive(Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    amount_cents: i64,
    country: String,
}

#[derive(Serialize)]
struct Enriched<'a> {
    order_id: &'a str,
    customer: &'a str,
    amount_cents: i64,
    amount: String,
    country: &'a str,
    region: &'static str,
}

fn region(country: &str) -> &'static str {
    match country {
        "DE" | "FR" | "NL" | "ES" | "IT" | "PL" | "SE" | "IE" | "AT" | "BE" => "EU",
        "US" | "CA" | "MX" => "NA",
        "JP" | "CN" | "IN" | "SG" | "AU" | "KR" => "APAC",
        _ => "OTHER",
    }
}

struct Etl {
    min_amount_cents: i64,
}

#[async_trait]
impl Processor for Etl {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for record in batch {
            let order: Order =
                match serde_json::from_slice(record.value.as_deref().unwrap_or_default()) {
                    Ok(order) => order,
                    Err(e) => {
                        // The poison policy decides: Err under `fail`, Ok under skip/dead_letter.
                        ctx.poison(record, format!("not an order: {e}"))?;
                        continue;
                    }
                };
            if order.amount_cents < self.min_amount_cents {
                continue;
            }
            let enriched = Enriched {
                order_id: &order.order_id,
                customer: &order.customer,
                amount_cents: order.amount_cents,
                amount: format!(
                    "{}.{:02}",
                    order.amount_cents / 100,
                    order.amount_cents.rem_euclid(100)
                ),
                country: &order.country,
                region: region(&order.country),
            };
            let value = serde_json::to_vec(&enriched).map_err(ProcessError::fatal)?;
            ctx.emit(
                Output::new(Some(order.order_id.as_bytes()), value)
                    .to_partition(record.partition)
                    .for_input(record),
            );
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
        .run(Etl {
            min_amount_cents: args.min_amount_cents,
        })
        .await?;
    tracing::info!(?summary, "etl stopped");
    Ok(())
}
