//! # windows — count and sum per key per tumbling window, each window emitted exactly once
//!
//! Input: key = UTF-8 account, value = a signed 64-bit integer as decimal text, record
//! timestamp = event time. Windows are tumbling, `[s, s + W)` per key with `s` a multiple of
//! `W = --window-ms` (default 60000), with a grace period `G = --grace-ms` (default 0).
//!
//! Per task (input partition), stream time is the largest timestamp processed before the
//! record. A record whose window's end + G <= that stream time is *late*: dropped and counted
//! (`weir_late_records_total`), or sent to `--dead-letter-topic` under `poison.policy =
//! dead_letter`. A window is emitted exactly once, when the task's stream time reaches its
//! end + G, to `--output-topic`: key = the input key, the same partition number as its input,
//! value the JSON `{"key": .., "start": .., "end": .., "count": .., "sum": ..}`, timestamp
//! end − 1. A window that only late records fell in is never emitted; windows still open when
//! the input stops stay open (in the state store) until stream time passes them.
//!
//! Windows live in the RocksDB store `windows` (changelog `{application.id}-windows-changelog`)
//! with an event-time timer each (store `weir-timers`); the emit, the window's deletion and the
//! input offsets that closed it commit in one transaction, so a `kill -9` at any moment neither
//! loses nor repeats a window, and a restart does not replay state.
//!
//! A key that is not UTF-8, or a value that does not parse, follows `poison.policy`.
//!
//! ```text
//! cargo run --example windows -- --bootstrap-servers localhost:9092 --application-id windows \
//!     --input-topic payments --output-topic per-minute --window-ms 60000 --grace-ms 5000
//! ```

mod common;

use clap::Parser;
use common::windows::Windows;
use weir::windows::WindowSpec;
use weir::App;

#[derive(Parser, Debug)]
#[command(about = "Count and sum per key per tumbling window, emitted once when it closes")]
struct Args {
    #[command(flatten)]
    common: common::CommonArgs,
    #[command(flatten)]
    poison: common::PoisonArgs,
    /// The window size W in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(i64).range(1..))]
    window_ms: i64,
    /// The grace period G in milliseconds: how long after its end a window takes late records.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    grace_ms: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let args = Args::parse();
    let config = args.common.config(&args.poison.keys())?;
    let spec = WindowSpec::tumbling(args.window_ms).grace(args.grace_ms);
    let summary = App::new(config)
        .on_restore_progress(weir::progress::restore_bars())
        .run(Windows::new("windows", spec))
        .await?;
    tracing::info!(?summary, "windows stopped");
    Ok(())
}
