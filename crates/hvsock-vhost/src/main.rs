//! `hvsock-vhost --dir DIR --vm NAME --socket PATH [--guest-cid N]`: see [`hvsock_vhost::cli`].

fn main() -> std::process::ExitCode {
    hvsock_vhost::cli::main()
}
