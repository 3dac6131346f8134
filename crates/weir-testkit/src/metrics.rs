//! Reading an application's Prometheus endpoint (`metrics.address`) from a test.

/// A local address nobody listens on (for `metrics.address`).
pub fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port();
    format!("127.0.0.1:{port}")
}

/// GETs `http://{address}/metrics`.
///
/// # Panics
///
/// When nothing listens there.
pub fn scrape(address: &str) -> String {
    try_scrape(address).unwrap_or_else(|| panic!("no metrics endpoint answers at {address}"))
}

/// GETs `http://{address}/metrics`; `None` while nothing listens there yet.
pub fn try_scrape(address: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the first sample of `metric` whose line contains every one of `labels`
/// (comma-separated).
pub fn sample(text: &str, metric: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric} ")) || l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.split(',').all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}
