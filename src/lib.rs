//! Nothing here: this package exists for the workspace's end-to-end tests (`tests/`), examples
//! (`examples/`) and benchmark (`benches/`). The libraries are `hvsock`, `hvsock-proto` and
//! `hvsockd`; the binaries are `hvsockd` and `hvsock`.
