//! `just kafka`: starts a Kafka broker for you (the same launcher the tests use), prints its
//! bootstrap address, and keeps it running until Ctrl-C.

fn main() {
    let kafka = match weir_testkit::Kafka::start() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
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
