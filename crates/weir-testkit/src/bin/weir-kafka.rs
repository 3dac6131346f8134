//! `just kafka`: starts a Kafka broker for you (the same launcher the tests use), prints its
//! bootstrap address, and keeps it running until Ctrl-C.
//!
//! `--topic NAME:PARTITIONS` (repeatable) creates topics; `--payments NAME:N` produces N
//! `totals`-style records (key `acct-K`, value a signed integer) into one — enough to try the
//! examples and the `weir` command without other tools:
//!
//! ```text
//! cargo run -p weir-testkit --bin weir-kafka -- --topic payments:3 --topic totals:3 --payments payments:50000
//! ```

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kafka = match weir_testkit::Kafka::start() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut i = 0;
    while i < args.len() {
        let (flag, value) = (args[i].as_str(), args.get(i + 1).map(String::as_str));
        let split = value.and_then(|v| v.rsplit_once(':'));
        match (flag, split) {
            ("--topic", Some((name, n))) => {
                kafka.create_topic(name, n.parse().expect("--topic NAME:PARTITIONS"));
            }
            ("--payments", Some((name, n))) => {
                let n: usize = n.parse().expect("--payments NAME:N");
                let partitions =
                    kafka.admin().partition_count(name).expect("topic exists") as usize;
                kafka.produce(
                    name,
                    (0..n).map(|i| {
                        let k = (i * 7_919) % 1_000;
                        weir_testkit::TestRecord::new(
                            (k % partitions) as i32,
                            format!("acct-{k}"),
                            ((i % 201) as i64 - 100).to_string(),
                        )
                    }),
                );
            }
            _ => {
                eprintln!("usage: weir-kafka [--topic NAME:PARTITIONS]... [--payments NAME:N]...");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    println!("{}", kafka.bootstrap_servers());
    eprintln!(
        "Kafka is running ({}) at {}; press Ctrl-C to stop it.",
        kafka.backend_name(),
        kafka.bootstrap_servers()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = ctrlc_channel(tx);
    let _ = rx.recv();
    drop(kafka);
}

/// Waits for SIGINT/SIGTERM on a small tokio runtime and signals the channel.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        });
        let _ = tx.send(());
    });
    Ok(())
}
