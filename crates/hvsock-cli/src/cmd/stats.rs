//! `hvsock stats`: hvsockd's counters (`GET /v1/stats`) as tables, or `--json` for the API's
//! object.
//!
//! ```text
//! CONNECTIONS
//! PARTITION  SERVICE  ESTABLISHED  REFUSED  REASONS
//! a          echo     3            1        denied=1
//!
//! LISTENERS
//! PARTITION  SERVICE  LISTENERS
//! host       echo     1
//! ```
//!
//! A section with no rows says `(none)`; client errors (clients hvsockd dropped for breaking
//! the protocol) get a third section only when there are some.

use std::io::Write;

use super::{CliError, Doing, admin};
use crate::api::Stats;
use crate::context::Context;
use crate::output::{Table, write_json};

/// Runs `stats`.
pub fn run(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || "reading the counters".to_owned();
    let reply = admin(ctx, doing)?.stats().doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(write_tables(out, &reply.value)?)
}

fn section(out: &mut dyn Write, title: &str, table: &Table) -> std::io::Result<()> {
    writeln!(out, "{title}")?;
    if table.is_empty() {
        writeln!(out, "(none)")
    } else {
        table.write_to(out)
    }
}

fn write_tables(out: &mut dyn Write, stats: &Stats) -> std::io::Result<()> {
    let mut conns = Table::new(["PARTITION", "SERVICE", "ESTABLISHED", "REFUSED", "REASONS"]);
    for c in &stats.connections {
        let refused: u64 = c.refused.values().sum();
        let reasons: Vec<String> = c.refused.iter().map(|(r, n)| format!("{r}={n}")).collect();
        conns.row([
            c.partition.clone(),
            c.service.clone(),
            c.established.to_string(),
            refused.to_string(),
            if reasons.is_empty() {
                "-".to_owned()
            } else {
                reasons.join(",")
            },
        ]);
    }
    section(out, "CONNECTIONS", &conns)?;
    writeln!(out)?;
    let mut listeners = Table::new(["PARTITION", "SERVICE", "LISTENERS"]);
    for l in &stats.listeners {
        listeners.row([
            l.partition.clone(),
            l.service.clone(),
            l.listeners.to_string(),
        ]);
    }
    section(out, "LISTENERS", &listeners)?;
    if !stats.client_errors.is_empty() {
        writeln!(out)?;
        let mut errors = Table::new(["PARTITION", "REASON", "COUNT"]);
        for (partition, reasons) in &stats.client_errors {
            for (reason, n) in reasons {
                errors.row([partition.clone(), reason.clone(), n.to_string()]);
            }
        }
        section(out, "CLIENT ERRORS", &errors)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_from_the_api_object() {
        let stats: Stats = serde_json::from_str(
            r#"{"connections":[{"partition":"a","service":"echo","service_id":null,
                 "established":3,"refused":{"denied":1,"refused":2}}],
                "listeners":[],"client_errors":{"b":{"bad_frame":4}}}"#,
        )
        .expect("parses");
        let mut buf = Vec::new();
        write_tables(&mut buf, &stats).expect("write");
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            "CONNECTIONS\n\
             PARTITION  SERVICE  ESTABLISHED  REFUSED  REASONS\n\
             a          echo     3            3        denied=1,refused=2\n\
             \n\
             LISTENERS\n\
             (none)\n\
             \n\
             CLIENT ERRORS\n\
             PARTITION  REASON     COUNT\n\
             b          bad_frame  4\n"
        );
    }
}
