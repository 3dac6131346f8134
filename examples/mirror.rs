//! # mirror — the exactly-once topic copier
//!
//! Copies every record of `--input-topic` to `--output-topic` unchanged — key, value, headers,
//! timestamp — into the same partition number it came from. Under `exactly_once` (the default)
//! each commit interval is one Kafka transaction holding the copies *and* the input offsets, so a
//! `read_committed` reader of the output sees every input record exactly once, in input order per
//! partition, whatever happens to this process. Under `at_least_once` a crash may repeat
//! records, never lose them.
//!
//! The output topic needs at least as many partitions as the input topic.
//!
//! ```text
//! cargo run --example mirror -- --bootstrap-servers localhost:9092 \
//!     --application-id mirror --input-topic in --output-topic out
//! ```
//!
//! Break it: `kill -9` it mid-run and start it again; then read the output with
//! `weir verify` (or the test kit's verifier) and find no duplicate and no gap.
//! It runs until SIGINT/SIGTERM, which commit the open transaction and exit 0.

mod common;

use clap::Parser;
use weir::{async_trait, App, Context, ProcessError, Processor, Record};

#[derive(Parser, Debug)]
#[command(about = "Copies a topic exactly once, partition for partition")]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,
}

/// Forwards every record unchanged to the same partition number.
struct Mirror;

#[async_trait]
impl Processor for Mirror {
    async fn process(
        &mut self,
        batch: &[Record],
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        for record in batch {
            ctx.emit(record.forward());
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.common.config(&[])?;
    let summary = App::new(config).run(Mirror).await?;
    tracing::info!(?summary, "mirror stopped");
    Ok(())
}
