//! # sessions — count and sum per key per session, each session emitted exactly once
//!
//! Input: as `windows` (key = UTF-8 account, value = a signed 64-bit integer as decimal text,
//! record timestamp = event time). A session of a key is a run of its records each less than
//! `--gap-ms` (default 30000) after the previous one (in event time, not arrival order): the
//! window `[first, last + gap)`. A record whose `[t, t + gap)` overlaps sessions of its key
//! merges them into one — also an out-of-order record that bridges two sessions.
//!
//! Per task (input partition), stream time is the largest timestamp processed before the
//! record; a record whose `t + gap + G <= stream time` (`G = --grace-ms`, default 0) is late:
//! dropped and counted (`weir_late_records_total`), or dead-lettered. A session is emitted
//! exactly once, when the task's stream time reaches its end + G, to `--output-topic`: key =
//! the input key, the same partition number as its input, value the JSON `{"key": ..,
//! "start": .., "end": .., "count": .., "sum": ..}` with `end = last + gap`.
//!
//! ```text
//! cargo run --example sessions -- --bootstrap-servers localhost:9092 --application-id sessions \
//!     --input-topic clicks --output-topic visits --gap-ms 600000
//! ```

mod common;

use clap::Parser;
use common::windows::Windows;
use weir::windows::WindowSpec;
use weir::App;

#[derive(Parser, Debug)]
#[command(about = "Count and sum per key per session, emitted once when it closes")]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,
    #[command(flatten)]
    poison: common::PoisonArgs,
    /// The inactivity gap in milliseconds that ends a session.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(i64).range(1..))]
    gap_ms: i64,
    /// The grace period G in milliseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    grace_ms: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.common.config(&args.poison.keys())?;
    let spec = WindowSpec::session(args.gap_ms).grace(args.grace_ms);
    let summary = App::new(config)
        .on_restore_progress(weir::progress::restore_bars())
        .run(Windows::new("sessions", spec))
        .await?;
    tracing::info!(?summary, "sessions stopped");
    Ok(())
}
