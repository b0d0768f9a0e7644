//! What the commands print, in one place so that every command looks the same.
//!
//! - [`Table`]: a list for people: a header line in capitals, then one line per item, columns
//!   aligned with two spaces between them and no trailing blanks.
//! - [`Fields`]: one item for people: `key: value` lines, the values aligned.
//! - [`write_json`]: the machine-readable form (`--json`): the admin API's JSON as it came,
//!   pretty-printed, one document per command.
//!
//! Everything is written through an `io::Write` so that a closed stdout is an error the caller
//! sees (see `main.rs`), never a panic as with `println!`.

use std::fmt::Display;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

/// An aligned table with a header.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new<I, S>(header: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are kept.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the header and the rows.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                if i + 1 < columns {
                    let pad = width.saturating_sub(cell.chars().count());
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// `key: value` lines for one item, the values aligned.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    rows: Vec<(String, String)>,
}

impl Fields {
    /// No fields yet.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// Adds `key: value`.
    pub fn field(&mut self, key: impl Into<String>, value: impl Display) -> &mut Fields {
        self.rows.push((key.into(), value.to_string()));
        self
    }

    /// Writes the lines.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (key, value) in &self.rows {
            let pad = width - key.chars().count();
            let line = format!("{key}: {}{value}", " ".repeat(pad));
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Writes `value` as pretty JSON and a newline.
pub fn write_json(out: &mut dyn Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)
}

/// An optional value for a table cell or a field: `-` when absent.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `yes` or `no`.
pub fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// The first second humantime cannot format (year 10000): its `Display` fails there.
const YEAR_10000: u64 = 253_402_300_800;

/// Seconds since the Unix epoch as an RFC 3339 UTC time (`2025-01-31T12:00:00Z`); `-` for
/// values that are not a time.
pub fn timestamp(secs: i64) -> String {
    match u64::try_from(secs) {
        Ok(secs) if secs > 0 && secs < YEAR_10000 => SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".to_owned()),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).expect("writing to a Vec");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let mut t = Table::new(["NAME", "ID", "ENABLED"]);
        t.row(["echo", "00000ac9", "yes"]);
        t.row(["a-long-name", "1", ""]);
        let out = text(|b| t.write_to(b));
        assert_eq!(
            out,
            "NAME         ID        ENABLED\n\
             echo         00000ac9  yes\n\
             a-long-name  1\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(["N", "X"]);
        t.row(["ü", "1"]);
        t.row(["ab", "2"]);
        assert_eq!(text(|b| t.write_to(b)), "N   X\nü   1\nab  2\n");
    }

    #[test]
    fn fields_align_values() {
        let mut f = Fields::new();
        f.field("name", "echo")
            .field("vsock_port", 2761)
            .field("x", "");
        assert_eq!(
            text(|b| f.write_to(b)),
            "name:       echo\nvsock_port: 2761\nx:\n"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(-5), "-");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(timestamp(i64::MAX), "-");
    }
}
