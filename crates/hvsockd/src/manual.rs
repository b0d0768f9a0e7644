//! hvsockd's manual page (`hvsockd.8`) and shell completions, generated from its command line
//! (the clap definition that `main.rs` passes in) plus the sections clap does not know:
//! FILES, ENVIRONMENT, SIGNALS, EXIT STATUS and SEE ALSO.
//!
//! `hvsockd --man` and `hvsockd --completions SHELL` print them; `scripts/install.sh` installs
//! them. The binary renders its own page because only it has its definition: the `hvsock` CLI
//! does not depend on the daemon crate.

use std::io::{self, Write};

use clap_mangen::roff::{Roff, bold, italic, roman};

/// A section of the page beyond what clap knows: `(tag, text)` items, a plain paragraph where
/// the tag is empty.
type Section = (&'static str, &'static [(&'static str, &'static str)]);

const SECTIONS: &[Section] = &[
    (
        "FILES",
        &[
            (
                "",
                "Without --dir, root uses /var/lib/hvsock for state and /run/hvsock for sockets; \
                 other users use $XDG_STATE_HOME/hvsock and $XDG_RUNTIME_DIR/hvsock. With --dir DIR \
                 everything is under DIR.",
            ),
            (
                "/run/hvsock/host.sock",
                "The root partition's endpoint (AF_UNIX, SOCK_SEQPACKET), for processes of the \
                 host. Mode 0660; its group is --socket-group (hvsock when packaged), whose \
                 members may connect as the root partition.",
            ),
            (
                "/run/hvsock/admin.sock",
                "The admin API: HTTP/1.1 and JSON under /v1/, Prometheus text at /metrics. Mode \
                 0600: the owner only.",
            ),
            (
                "/run/hvsock/partitions/VMID/endpoint.sock",
                "The endpoint of a sandbox partition, created when the partition is added, in \
                 the partition's own directory: bind-mount the directory (read-only is fine) \
                 into the sandbox, which then keeps reaching hvsockd across restarts. \
                 /run/hvsock/partitions/VMID.sock is a link to it, for older setups. The \
                 partitions directory is mode 0700.",
            ),
            (
                "/run/hvsock/hvsockd.lock",
                "Holds the pid of the hvsockd that serves the directory; a second one refuses to \
                 start.",
            ),
            (
                "/var/lib/hvsock/registry.db",
                "The registry of services and partitions (SQLite, write-ahead log). Back it up \
                 with sqlite3's .backup command while hvsockd runs.",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            ("HVSOCK_DIR", "As --dir."),
            (
                "RUST_LOG",
                "Which log lines to write, as a tracing filter (default info; e.g. \
                 hvsockd=debug,info).",
            ),
            (
                "LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES",
                "Socket activation (sd_listen_fds(3)): hvsockd serves the passed listening \
                 sockets named host (SOCK_SEQPACKET) and admin (SOCK_STREAM) instead of binding \
                 its own, leaves their owner and mode alone, and never removes their files. \
                 Unnamed sockets are told apart by type. A socket of the wrong type, family or \
                 state stops the start with the reason. Partition endpoints are created as \
                 partitions are added and are never socket-activated.",
            ),
            (
                "NOTIFY_SOCKET",
                "Readiness (sd_notify(3), Type=notify): READY=1 once every socket is open, \
                 STOPPING=1 when hvsockd begins to stop.",
            ),
            (
                "JOURNAL_STREAM",
                "When stderr is the systemd journal, text logs leave out the timestamp (the \
                 journal keeps its own).",
            ),
        ],
    ),
    (
        "SIGNALS",
        &[
            (
                "SIGTERM, SIGINT",
                "Stop: close every listener and control connection, remove the sockets hvsockd \
                 created, exit 0. Established connections are kernel sockets that hvsockd never \
                 held: they go on. Listeners must bind again once hvsockd is back.",
            ),
            (
                "SIGKILL",
                "The same for connections; the socket files stay behind and are replaced at the \
                 next start.",
            ),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            (
                "0",
                "Stopped by SIGTERM or SIGINT, or --help, --version, --man, --completions.",
            ),
            (
                "1",
                "Could not start or failed (the reason is logged and printed on stderr).",
            ),
            ("2", "A malformed command line."),
        ],
    ),
];

const SEE_ALSO: &[(&str, &str)] = &[
    ("hvsock", "1"),
    ("systemd.socket", "5"),
    ("sd_listen_fds", "3"),
    ("sd_notify", "3"),
    ("systemd-sysusers", "8"),
];

/// Writes the manual page of `cmd` (hvsockd's command line) in section 8.
pub fn write_man(cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("hvsock {}", env!("CARGO_PKG_VERSION")));
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut roff = Roff::new();
    for (title, items) in SECTIONS {
        roff.control("SH", [*title]);
        for (tag, text) in *items {
            if tag.is_empty() {
                roff.control("PP", []);
            } else {
                roff.control("TP", []).text([bold(*tag)]);
            }
            roff.text([roman(*text)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    for (i, (page, section)) in SEE_ALSO.iter().enumerate() {
        let sep = if i + 1 == SEE_ALSO.len() { "" } else { "," };
        roff.text([bold(*page), roman(format!("({section}){sep}"))]);
    }
    roff.control("PP", []).text([
        roman("The operator's guide: "),
        italic("docs/operators.md"),
        roman(" in the hvsock sources."),
    ]);
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// Writes the completion script of `cmd` for `shell`.
pub fn write_completions(
    shell: clap_complete::Shell,
    mut cmd: clap::Command,
    out: &mut dyn Write,
) -> io::Result<()> {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_page_has_every_section_and_option() {
        let cmd = clap::Command::new("hvsockd")
            .about("The provider")
            .version("1.2.3")
            .arg(clap::Arg::new("dir").long("dir"));
        let mut page = Vec::new();
        write_man(cmd, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        for want in [
            ".TH hvsockd 8",
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            "\\-\\-dir",
            ".SH FILES",
            "/run/hvsock/host.sock",
            ".SH ENVIRONMENT",
            "LISTEN_FDS",
            ".SH SIGNALS",
            ".SH \"EXIT STATUS\"",
            ".SH \"SEE ALSO\"",
            "sd_listen_fds",
            "1.2.3",
        ] {
            assert!(page.contains(want), "{want:?} missing from\n{page}");
        }
    }
}
