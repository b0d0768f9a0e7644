//! The whole command line: [`Cli`] (`--dir` and one [`Command`]), declared with clap's derive
//! API, and [`Cli::run`], which runs it.
//!
//! The commands, with their own arguments, are in [`crate::cmd`]; the arguments several of them
//! share in [`crate::args`]. Arguments are checked as far as they can be without hvsockd, so
//! that a malformed command line is a usage error (exit 2, clap's message) and never reaches
//! the daemon. [`Cli::command`](clap::CommandFactory) is the whole tree, for completions and
//! man pages.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;

use crate::args::ADDRESSES;
use crate::cmd::{Command, Run};
use crate::context::Context;
use crate::error::CliError;

/// Manage hvsockd's services and partitions, and listen or connect like nc.
#[derive(Debug, Parser)]
#[command(
    name = "hvsock",
    version,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = ADDRESSES
)]
pub struct Cli {
    /// The directory of the hvsockd to use [default: $HVSOCK_DIR, else /run/hvsock for root,
    /// $XDG_RUNTIME_DIR/hvsock for other users]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Runs the command, writing its results to `out`.
    ///
    /// On Windows, where Hyper-V itself is the provider, `--dir` (an hvsockd directory) is an
    /// error that says why; each command says for itself what it does there.
    pub fn run(self, out: &mut dyn Write) -> Result<(), CliError> {
        #[cfg(windows)]
        if self.dir.is_some() {
            return Err(CliError::unsupported(
                "--dir",
                "it names an hvsockd directory, and hvsockd runs on Linux; on Windows services \
                 are in the Hyper-V registry and connections use AF_HYPERV (a script for both \
                 platforms can set HVSOCK_DIR for Linux instead)",
            ));
        }
        let ctx = Context::new(self.dir);
        self.command.run(&ctx, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            vec!["hvsock", "service", "add", "x", "--id", "nope"],
            vec!["hvsock", "service", "add", "x", "--port", "-1"],
            vec![
                "hvsock",
                "service",
                "add",
                "x",
                "--port",
                "1",
                "--id",
                "00000ac9-facb-11e6-bd58-64006a7986d3",
            ],
            vec!["hvsock", "service", "add", "2761"],
            vec!["hvsock", "service", "add", "a:b"],
            vec!["hvsock", "vm", "add", "parent"],
            vec![
                "hvsock",
                "vm",
                "add",
                "x",
                "--id",
                "a42e7cda-d03f-480c-9cc2-a4de20abb878",
            ],
            vec!["hvsock", "connect", "parent"],
            vec!["hvsock", "connect", "parent:99999999999"],
            vec!["hvsock", "connect", "--timeout", "0", "parent:1"],
            vec!["hvsock", "listen", "--max-connections", "5", "parent:1"],
            vec!["hvsock", "service", "rename", "echo", "2761"],
            vec!["hvsock", "vm", "rename", "a", "parent"],
            vec![
                "hvsock",
                "service",
                "policy",
                "echo",
                "--wildcard-bind",
                "maybe",
            ],
            vec![
                "hvsock",
                "service",
                "policy",
                "echo",
                "--connect",
                "a",
                "--connect-any",
            ],
            vec![
                "hvsock",
                "service",
                "policy",
                "echo",
                "--default",
                "--bind",
                "a",
            ],
            vec!["hvsock", "registry", "import"],
            vec!["hvsock"],
        ] {
            let err = Cli::try_parse_from(&args).expect_err(&format!("{args:?}"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn dir_is_accepted_before_and_after_the_command() {
        let cli = Cli::try_parse_from(["hvsock", "--dir", "/a", "stats"]).expect("parses");
        assert_eq!(cli.dir, Some(PathBuf::from("/a")));
        let cli =
            Cli::try_parse_from(["hvsock", "service", "list", "--dir", "/b"]).expect("parses");
        assert_eq!(cli.dir, Some(PathBuf::from("/b")));
    }
}
