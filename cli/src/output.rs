//! Output helpers shared by the CLIs: aligned human tables, key/value
//! blocks, `--json` printing, human units, and the one-line error report
//! every tool prints before exiting non-zero.

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

/// A table of left-aligned columns separated by two spaces; the last
/// column is not padded (no trailing blanks).
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.as_ref().to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are kept.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < ncols {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print_str(&self.render());
    }
}

/// `key: value` lines with the values aligned.
pub fn key_values<K: AsRef<str>, V: Display>(pairs: &[(K, V)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.as_ref().chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let k = k.as_ref();
        out.push_str(&format!(
            "{k}:{}{v}\n",
            " ".repeat(w - k.chars().count() + 1)
        ));
    }
    out
}

/// `value` as JSON when `json` is set, else as `text` prints it: the two
/// output modes of every command.
pub fn print_as<T: Serialize + ?Sized>(json: bool, value: &T, text: impl FnOnce(&T)) {
    if json {
        print_json(value);
    } else {
        text(value);
    }
}

/// A list as JSON when `json` is set, else one `line` per item.
pub fn print_lines<T: Serialize>(json: bool, items: &[T], line: impl Fn(&T) -> String) {
    print_as(json, items, |items| {
        let text: String = items.iter().map(|i| line(i) + "\n").collect();
        print_str(&text);
    });
}

/// Pretty JSON of `value` on stdout (what `--json` prints).
pub fn print_json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => print_str(&format!("{s}\n")),
        Err(e) => {
            // Domain types always serialize; this would be a bug.
            eprintln!("error: cannot encode JSON: {e}");
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`| head`).
pub fn print_str(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Prints `error: <message>` as one line on stderr and returns the failure
/// exit code: what every CLI does with an error it cannot recover from.
pub fn fail(message: impl Display) -> ExitCode {
    eprintln!("error: {}", one_line(&message.to_string()));
    ExitCode::FAILURE
}

/// Collapses newlines so an error stays on one line.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The workspace's one chain printer, re-exported so the binaries' error
/// paths read `output::error_chain` beside the other output helpers.
pub use commands::report::error_chain;

/// 1536 → "1.5 KiB": the workspace's one byte formatter, shared with
/// repohub's pages.
pub use commands::model::human_bytes as bytes;

/// 93_000 ms → "1m33s"; under a second → "250ms".
pub fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Age of a unix-ms timestamp relative to `now_ms` ("-" when unset).
pub fn age(then_ms: u64, now_ms: u64) -> String {
    if then_ms == 0 {
        "-".into()
    } else {
        duration_ms(now_ms.saturating_sub(then_ms))
    }
}

/// "-" for an empty cell.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `k=v,k=v` for labels.
pub fn labels<'a>(it: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let s: Vec<String> = it.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(",")
    }
}

/// The length every human table shortens a hash to (`--json` keeps the
/// whole hash).
pub const SHORT_HASH: usize = 12;

/// A hash as human tables show it: without its `sha256:` prefix, the first
/// [`SHORT_HASH`] characters, `-` when empty.
pub fn short_hash(hash: &str) -> String {
    let h = hash.strip_prefix("sha256:").unwrap_or(hash);
    if h.is_empty() {
        "-".into()
    } else {
        h.chars().take(SHORT_HASH).collect()
    }
}

/// A VM's health as tables show it: `-` when its spec has no check (a
/// running VM then counts as healthy; the STATE column says whether it runs).
pub fn health(h: commands::types::Health) -> String {
    match h {
        commands::types::Health::None => "-".into(),
        other => other.to_string(),
    }
}

/// The health cell with its reason: `unhealthy (no "READY" on the console
/// within 30000 ms)`.
pub fn health_with_detail(h: commands::types::Health, detail: &str) -> String {
    if detail.is_empty() {
        health(h)
    } else {
        format!("{} ({})", health(h), one_line(detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_cells() {
        use commands::types::Health;
        assert_eq!(health(Health::None), "-");
        assert_eq!(health(Health::Pending), "pending");
        assert_eq!(health_with_detail(Health::Healthy, ""), "healthy");
        assert_eq!(
            health_with_detail(Health::Unhealthy, "no \"READY\" within 5 ms"),
            "unhealthy (no \"READY\" within 5 ms)"
        );
    }

    #[test]
    fn hashes_shorten_to_one_length() {
        assert_eq!(short_hash("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_hash(&"f".repeat(64)).len(), SHORT_HASH);
        assert_eq!(short_hash(""), "-");
    }

    #[test]
    fn table_aligns_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "NAME", "STATE"]);
        t.row(["1", "web-0", "running"]).row(["22", "db", ""]);
        assert_eq!(t.render(), "ID  NAME   STATE\n1   web-0  running\n22  db\n");
        assert!(!t.is_empty());
    }

    #[test]
    fn key_values_align() {
        assert_eq!(
            key_values(&[("id", "w1"), ("address", "x")]),
            "id:      w1\naddress: x\n"
        );
    }

    #[test]
    fn units_and_lines() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration_ms(250), "250ms");
        assert_eq!(duration_ms(93_000), "1m33s");
        assert_eq!(duration_ms(7_200_000), "2h00m");
        assert_eq!(age(0, 5), "-");
        assert_eq!(one_line("a\n  b\r\nc"), "a b c");
        assert_eq!(or_dash(""), "-");
    }
}
