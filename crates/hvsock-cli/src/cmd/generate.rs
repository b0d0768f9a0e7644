//! `hvsock completions SHELL` and `hvsock man [--output DIR]`: shell completions
//! (`clap_complete`) and manual pages (`clap_mangen`) generated from the command tree in
//! [`crate::cli`], so that they say what `--help` says and never drift from it.
//!
//! Each page has clap's sections (NAME, SYNOPSIS, DESCRIPTION, OPTIONS, SUBCOMMANDS, VERSION)
//! and the ones clap does not know: ADDRESSES and EXIT STATUS where `--help` has them, and on
//! hvsock(1) ENVIRONMENT and FILES; every page ends with SEE ALSO. Pages are named after the
//! command path: `hvsock.1`, `hvsock-service.1`, `hvsock-service-add.1`, …

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_mangen::roff::{Roff, bold, roman};

use super::Run;
use crate::args::{ADDRESS_HELP, EXIT_STATUS_HELP};
use crate::cli::Cli;
use crate::context::Context;
use crate::error::CliError;

/// `hvsock completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `hvsock man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write every page into DIR (created if missing) instead of hvsock.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

impl Run for CompletionsArgs {
    fn run(self, _ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        completions(self.shell, out)
    }
}

impl Run for ManArgs {
    fn run(self, _ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        man(self.output.as_deref(), out)
    }
}

/// The manual's section.
const SECTION: &str = "1";

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "HVSOCK_DIR",
        "The directory of the hvsockd to use, as --dir (for commands, and for programs built on \
         the hvsock library).",
    ),
    (
        "HVSOCK_ENDPOINT",
        "The endpoint socket that listen and connect go through (default: host.sock in the \
         directory). Inside a sandbox, the partition's endpoint bind-mounted there.",
    ),
    (
        "HVSOCK_TRANSPORT",
        "provider (the default) or vsock (inside a Linux guest, where there is no hvsockd).",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "/run/hvsock/host.sock",
        "The root partition's endpoint; members of the hvsock group may use it. Non-root users \
         default to $XDG_RUNTIME_DIR/hvsock: set HVSOCK_DIR=/run/hvsock to use the system's \
         hvsockd.",
    ),
    (
        "/run/hvsock/admin.sock",
        "hvsockd's admin API, which service, vm and stats use, and which resolves names: root \
         only.",
    ),
];

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "hvsock", out);
    Ok(out.flush()?)
}

/// Writes hvsock(1) to `out`, or with `dir` every page into it (and their names to `out`).
pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> Result<(), CliError> {
    // As clap_mangen does: `help` is not a command worth a page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = dir else {
        return Ok(render(&cmd, true, out)?);
    };
    std::fs::create_dir_all(dir).map_err(|source| CliError::File {
        doing: "creating the directory",
        path: dir.to_owned(),
        source,
    })?;
    let mut pages = Vec::new();
    collect(&cmd, &mut pages);
    for (i, page) in pages.iter().enumerate() {
        let path = dir.join(format!("{}.{SECTION}", display_name(page)));
        let file_err = |source| CliError::File {
            doing: "writing the manual page",
            path: path.clone(),
            source,
        };
        let mut file = io::BufWriter::new(std::fs::File::create(&path).map_err(file_err)?);
        render(page, i == 0, &mut file)
            .and_then(|()| file.flush())
            .map_err(file_err)?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// `cmd` and its visible subcommands, depth first, `cmd` first.
fn collect<'a>(cmd: &'a clap::Command, pages: &mut Vec<&'a clap::Command>) {
    pages.push(cmd);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages);
    }
}

fn display_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned()
}

/// One page. `top`: the page of `hvsock` itself, which also gets ENVIRONMENT and FILES.
fn render(cmd: &clap::Command, top: bool, out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .manual("hvsock manual")
        .source(format!("hvsock {}", env!("CARGO_PKG_VERSION")));
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    let mut roff = Roff::new();
    if cmd.get_after_help().is_some() {
        preformatted(&mut roff, "ADDRESSES", ADDRESS_HELP);
    }
    if top || cmd.get_after_help().is_some() {
        preformatted(&mut roff, "EXIT STATUS", EXIT_STATUS_HELP);
    }
    if top {
        tagged(&mut roff, "ENVIRONMENT", ENVIRONMENT);
        tagged(&mut roff, "FILES", FILES);
    }
    roff.control("SH", ["SEE ALSO"]);
    let parent = display_name(cmd)
        .rsplit_once('-')
        .map(|(parent, _)| parent.to_owned());
    let mut see: Vec<(String, &str)> = Vec::new();
    if let Some(parent) = parent {
        see.push((parent, SECTION));
    }
    see.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| (display_name(s), SECTION)),
    );
    see.push(("hvsockd".to_owned(), "8"));
    for (i, (page, section)) in see.iter().enumerate() {
        let sep = if i + 1 == see.len() { "" } else { "," };
        roff.text([bold(page.as_str()), roman(format!("({section}){sep}"))]);
    }
    roff.to_writer(out)?;
    man.render_version_section(out)
}

fn preformatted(roff: &mut Roff, title: &str, text: &str) {
    roff.control("SH", [title]).control("nf", []);
    for line in text.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
}

fn tagged(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", [])
            .text([bold(*tag)])
            .text([roman(*text)]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_command_gets_a_page_named_after_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut listing = Vec::new();
        man(Some(dir.path()), &mut listing).unwrap();
        let listing = String::from_utf8(listing).unwrap();
        for page in [
            "hvsock.1",
            "hvsock-service.1",
            "hvsock-service-add.1",
            "hvsock-vm-remove.1",
            "hvsock-listen.1",
            "hvsock-connect.1",
            "hvsock-addr.1",
            "hvsock-stats.1",
            "hvsock-completions.1",
            "hvsock-man.1",
        ] {
            let path = dir.path().join(page);
            assert!(listing.contains(&path.display().to_string()), "{page}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(".TH hvsock"), "{page}: {text}");
            assert!(text.contains(".SH \"SEE ALSO\""), "{page}");
        }
        let connect = std::fs::read_to_string(dir.path().join("hvsock-connect.1")).unwrap();
        assert!(connect.contains(".SH ADDRESSES"), "{connect}");
        assert!(connect.contains("\\fBhvsock\\fR(1)"), "{connect}");
        let top = std::fs::read_to_string(dir.path().join("hvsock.1")).unwrap();
        for section in [
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH \"EXIT STATUS\"",
            ".SH SUBCOMMANDS",
        ] {
            assert!(top.contains(section), "{section}");
        }
        assert!(!dir.path().join("hvsock-help.1").exists());
    }
}
