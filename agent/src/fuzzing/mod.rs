//! Every fuzz target of the agent: name and body. `agent/fuzz` (cargo-fuzz, libFuzzer; run by
//! `cargo xtask fuzz`) and the corpus replay tests run the same bodies. The OpenVPN codec
//! bodies live in `openvpn::fuzzing` (they reach that module's private items); the TAP and
//! admin socket bodies here. See docs/fuzzing.md.
//!
//! Every body takes arbitrary bytes, must never panic on them, and panics (an assertion) when
//! an invariant of the code under test breaks. Nothing here is used by the agent itself.

mod admin;
mod tap;
#[cfg(test)]
mod tests;

pub use admin::admin_request;
pub use tap::tap;

use crate::openvpn::fuzzing as ovpn;

/// A fuzz target body.
pub type Body = fn(&[u8]);

/// Every target: its name (the `fuzz_targets/<name>.rs` file and the corpus directory) and
/// body.
pub const TARGETS: &[(&str, Body)] = &[
    ("packet_decode", ovpn::packet_decode),
    ("stream_decoder", ovpn::stream_decoder),
    ("reliable", ovpn::reliable),
    ("control_message", ovpn::control_message),
    ("tls_crypt_unwrap", ovpn::tls_crypt_unwrap),
    ("server", ovpn::server),
    ("tap", tap),
    ("admin_request", admin_request),
];
