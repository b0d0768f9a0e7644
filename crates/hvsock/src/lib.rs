//! Hyper-V sockets.
pub mod addr;
pub mod guid;
