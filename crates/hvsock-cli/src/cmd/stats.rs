//! `hvsock stats`: hvsockd's counters (`GET /v1/stats`) as tables, or `--json` for the API's
//! object; and `hvsock listeners`, the live listeners (`GET /v1/listeners`).
//!
//! ```text
//! CONNECTIONS
//! PARTITION  SERVICE  ESTABLISHED  REFUSED  REASONS           AVG(ms)  P99(ms)
//! a          echo     3            1        policy_connect=1  0.180    0.250
//!
//! LISTENERS
//! PARTITION  SERVICE  LISTENERS
//! host       echo     1
//! ```
//!
//! PARTITION is the connecting partition. AVG is the mean time from the connect request to
//! the connection; P99 the upper bound of the latency bucket that holds the 99th percentile
//! (the buckets are `/metrics`'s `hvsock_connect_duration_seconds`). A section with no rows
//! says `(none)`; binds refused and client errors (clients hvsockd dropped for breaking the
//! protocol) get their sections only when there are some.

use std::io::Write;

use clap::Args;

use super::{Run, admin};
use crate::api::Stats;
use crate::context::Context;
use crate::error::{CliError, Doing};
use crate::output::{Table, write_json};

/// `hvsock stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hvsock listeners`.
#[derive(Debug, Args)]
pub struct ListenersArgs {
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Run for StatsArgs {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) {
            return Err(CliError::unsupported(
                "`hvsock stats`",
                "it reads hvsockd's counters, and there is no hvsockd on Windows",
            ));
        }
        run(ctx, self.json, out)
    }
}

impl Run for ListenersArgs {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) {
            return Err(CliError::unsupported(
                "`hvsock listeners`",
                "it lists hvsockd's listeners, and there is no hvsockd on Windows",
            ));
        }
        listeners(ctx, self.json, out)
    }
}

/// Runs `stats`.
pub fn run(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || "reading the counters".to_owned();
    let reply = admin(ctx, doing)?.stats().doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(write_tables(out, &reply.value)?)
}

/// Runs `listeners`: one line per listener, oldest first.
pub fn listeners(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || "listing the listeners".to_owned();
    let reply = admin(ctx, doing)?.listeners().doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(listener_table(&reply.value).write_to(out)?)
}

fn listener_table(listeners: &[crate::api::Listener]) -> Table {
    let mut table = Table::new([
        "ID",
        "PARTITION",
        "BOUND",
        "SERVICE",
        "BACKLOG",
        "UNACCEPTED",
        "WAITING",
        "ACCEPTED",
        "PID",
    ]);
    for l in listeners {
        let service = match &l.service_name {
            Some(name) => name.clone(),
            None => l.service.to_string(),
        };
        table.row([
            l.id.to_string(),
            l.partition_name.clone(),
            l.vm_keyword.clone().unwrap_or_else(|| l.vm.to_string()),
            service,
            l.backlog.to_string(),
            l.unaccepted.to_string(),
            l.waiting.to_string(),
            l.accepted.to_string(),
            crate::output::or_dash(l.pid),
        ]);
    }
    table
}

fn section(out: &mut dyn Write, title: &str, table: &Table) -> std::io::Result<()> {
    writeln!(out, "{title}")?;
    if table.is_empty() {
        writeln!(out, "(none)")
    } else {
        table.write_to(out)
    }
}

fn reasons(refused: &std::collections::BTreeMap<String, u64>) -> String {
    if refused.is_empty() {
        return "-".to_owned();
    }
    refused
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn write_tables(out: &mut dyn Write, stats: &Stats) -> std::io::Result<()> {
    let mut conns = Table::new([
        "PARTITION",
        "SERVICE",
        "ESTABLISHED",
        "REFUSED",
        "REASONS",
        "AVG(ms)",
        "P99(ms)",
    ]);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    for c in &stats.connections {
        let refused: u64 = c.refused.values().sum();
        conns.row([
            c.partition.clone(),
            c.service.clone(),
            c.established.to_string(),
            refused.to_string(),
            reasons(&c.refused),
            ms(c.latency_avg_ms),
            ms(c.latency_p99_ms),
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
    if !stats.binds_refused.is_empty() {
        writeln!(out)?;
        let mut binds = Table::new(["PARTITION", "SERVICE", "REFUSED", "REASONS"]);
        for b in &stats.binds_refused {
            binds.row([
                b.partition.clone(),
                b.service.clone(),
                b.refused.values().sum::<u64>().to_string(),
                reasons(&b.refused),
            ]);
        }
        section(out, "BINDS REFUSED", &binds)?;
    }
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
                 "established":3,"refused":{"denied":1,"refused":2},
                 "latency_avg_ms":0.1804,"latency_p99_ms":0.25},
                 {"partition":"b","service":"echo","established":0,"refused":{"disabled":1},
                 "latency_avg_ms":null,"latency_p99_ms":null}],
                "listeners":[],
                "binds_refused":[{"partition":"b","service":"echo","refused":{"policy_bind":2}}],
                "client_errors":{"b":{"bad_frame":4}}}"#,
        )
        .expect("parses");
        let mut buf = Vec::new();
        write_tables(&mut buf, &stats).expect("write");
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            "CONNECTIONS\n\
             PARTITION  SERVICE  ESTABLISHED  REFUSED  REASONS             AVG(ms)  P99(ms)\n\
             a          echo     3            3        denied=1,refused=2  0.180    0.250\n\
             b          echo     0            1        disabled=1          -        -\n\
             \n\
             LISTENERS\n\
             (none)\n\
             \n\
             BINDS REFUSED\n\
             PARTITION  SERVICE  REFUSED  REASONS\n\
             b          echo     2        policy_bind=2\n\
             \n\
             CLIENT ERRORS\n\
             PARTITION  REASON     COUNT\n\
             b          bad_frame  4\n"
        );
    }
}
