//! What `cipgw status`, `services` and `conntrack` share: the
//! `--admin`/`--json` flags, fetching a JSON view from a running gateway's
//! admin endpoint and printing it (as it came, or rendered for people),
//! and the aligned text tables and abbreviated numbers they render with.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use cipgw::admin::client;
use cipgw_config::settings::DEFAULT_ADMIN_ADDR;
use serde::de::DeserializeOwned;

use super::BadInput;

/// How long a request to the admin endpoint may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find the gateway, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The gateway's admin endpoint (`cipgw run --admin`).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADMIN_ADDR,
          value_parser = super::run::parse_socket_addr)]
    pub admin: SocketAddr,
    /// Print the endpoint's JSON as it is, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// GETs the view at `path` and prints it: the JSON as it came with
/// `--json`, else `render`ed.
pub fn show<T: DeserializeOwned>(
    args: &AdminArgs,
    path: &str,
    render: fn(&T) -> String,
) -> anyhow::Result<()> {
    let (raw, view) = fetch::<T>(args, path)?;
    if args.json {
        print!("{raw}");
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

/// GETs `path` and returns the raw JSON and its decoded view. A 400 (a
/// bad filter) is the user's input at fault.
fn fetch<T: DeserializeOwned>(args: &AdminArgs, path: &str) -> anyhow::Result<(String, T)> {
    decode(args, path, client::get(args.admin, path, TIMEOUT)?)
}

/// `DELETE path` at the admin endpoint; the raw JSON answer and its
/// decoded view, errors as in [`fetch`].
pub fn delete<T: DeserializeOwned>(args: &AdminArgs, path: &str) -> anyhow::Result<(String, T)> {
    decode(args, path, client::delete(args.admin, path, TIMEOUT)?)
}

fn decode<T: DeserializeOwned>(
    args: &AdminArgs,
    path: &str,
    reply: client::Response,
) -> anyhow::Result<(String, T)> {
    if reply.status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| reply.body.trim().to_owned());
        if reply.status == 400 {
            return Err(BadInput(message).into());
        }
        anyhow::bail!("{} answered {}: {message}", args.admin, reply.status);
    }
    let view = serde_json::from_str(&reply.body)
        .with_context(|| format!("reading {path} from {}", args.admin))?;
    Ok((reply.body, view))
}

/// A text table whose columns are padded to their widest cell; columns
/// after the first are right-aligned when `right[i]` says so.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    pub fn new(header: &[&str], right: &[bool]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            right: right.to_vec(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let w = widths[c];
                if self.right.get(c).copied().unwrap_or(false) {
                    let _ = write!(line, "{cell:>w$}");
                } else {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `1234567` as `1.23M`, like `ipvsadm --stats` abbreviates (K, M, G, T).
pub fn human(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "K"),
    ];
    for (scale, unit) in UNITS {
        if n >= scale * 10 {
            return format!("{}{unit}", n / scale);
        }
    }
    n.to_string()
}

/// Nanoseconds as `850ns`, `12.4us`, `3.1ms`.
pub fn duration_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_abbreviated_like_ipvsadm() {
        assert_eq!(human(999), "999");
        assert_eq!(human(12_345), "12K");
        assert_eq!(human(9_999), "9999");
        assert_eq!(human(123_456_789), "123M");
        assert_eq!(duration_ns(850), "850ns");
        assert_eq!(duration_ns(12_400), "12.4us");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "Count"], &[false, true]);
        t.row(vec!["long name".into(), "7".into()]);
        assert_eq!(t.render(), "A          Count\nlong name      7\n");
    }
}
