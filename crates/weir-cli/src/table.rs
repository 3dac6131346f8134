//! Plain aligned tables for people, JSON for programs.

use serde::Serialize;

use crate::Format;

/// Renders `rows` under `headers`, columns padded to their widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// An optional number, or `-`.
pub fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Prints `value` as pretty JSON when the format is JSON, else prints `text()`.
pub fn print<T: Serialize>(format: Format, value: &T, text: impl FnOnce() -> String) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable")
        ),
        Format::Table => print!("{}", text()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_to_the_widest_cell() {
        let t = super::render(
            &["TOPIC", "P"],
            &[
                vec!["orders".into(), "0".into()],
                vec!["a".into(), "12".into()],
            ],
        );
        assert_eq!(t, "TOPIC   P\norders  0\na       12\n");
    }
}
