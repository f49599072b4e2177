//! Everything that touches the operating system: files, sockets, devices, clocks.
pub mod tls_files;
