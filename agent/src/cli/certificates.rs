//! `portcullis certificates list|revoke`: the running agent's built-in PKI, over the admin
//! socket (the same actions as the console, recorded in the audit trail with the caller).
use std::fmt::Write;

use clap::Subcommand;

use super::Admin;
use crate::admin::CertificatesReply;
use crate::pki::store::when;

pub fn table(r: &CertificatesReply) -> String {
    let mut out = format!(
        "{:<24} {:<34} {:<6} {:<19} {}\n",
        "name", "serial", "kind", "not after (UTC)", "status"
    );
    for c in &r.certificates {
        let _ = writeln!(
            out,
            "{:<24} {:<34} {:<6} {:<19} {}",
            c.name,
            c.serial,
            c.kind,
            when(c.not_after),
            if c.revoked { "revoked" } else { "valid" }
        );
    }
    match &r.crl {
        Some(c) => {
            let _ = writeln!(
                out,
                "CRL #{}: {} revoked, published {}, next update {}",
                c.number,
                c.revoked,
                when(Some(c.this_update)),
                when(c.next_update)
            );
        }
        None => out.push_str("CRL: none published (run `portcullis pki crl`)\n"),
    }
    out
}

#[derive(Subcommand)]
pub enum CertificatesCmd {
    /// Name, serial, expiry and revocation of every certificate issued, and the CRL's dates.
    List {
        #[command(flatten)]
        admin: Admin,
        #[arg(long)]
        json: bool,
    },
    /// Revoke every certificate of NAME, or the one of --serial; the agent republishes its
    /// CRL and ends the revoked sessions within a second.
    Revoke {
        #[command(flatten)]
        admin: Admin,
        /// The certificate's common name.
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<String>,
        /// A serial (hex, from `certificates list`).
        #[arg(long)]
        serial: Option<String>,
    },
}
