//! Connection authentication beyond the certificate, and what it granted.
//!
//! - [`authenticator`]: the directory check, the failed-login rate limit and the
//!   client-connect hook, run as one [`crate::io::Authorizer`] on the tunnel's authorizer
//!   threads; built from the endpoint's configuration by [`Authenticator::build`].
//! - [`grants`]: what each admitted session was granted (directory user and groups).
//! - [`limiter`]: token buckets of failed logins per user and per source.
//! - [`directory`]: the LDAP / Active Directory client (pool, user lookup, groups).
//! - [`hook`]: the client-connect hook (a program or an HTTP POST).
//! - [`otp`]: TOTP codes and the static-challenge response.
//! - [`portal`]: the self-service portal's sign-in (the same directory check and limits).
//! - [`slots`]: the bound on directory logins in progress.
//! - [`token`]: session tokens (`auth-token`): minting and checking one.
//! - [`sessions`]: session tokens in a running gateway (issue, renew, accept, revoke).
//! - [`revoked`]: the token sessions an operator revoked (persisted).
//! - [`live`]: the authenticator in force, replaced by a reload for new logins.
//! - [`oidc`]: single sign-on through an OpenID Connect provider (web login, AUTH_PENDING).
pub mod authenticator;
pub mod directory;
pub mod grants;
pub mod hook;
pub mod limiter;
pub mod live;
pub mod oidc;
pub mod otp;
pub mod portal;
pub mod recheck;
pub mod revoked;
pub mod sessions;
pub mod slots;
pub mod token;

pub use authenticator::{AuthState, Authenticator, LocalGroups, RENEGOTIATION_WAIT};
pub use grants::{combined_groups, Grant, Grants};
pub use limiter::FailureLimiter;
pub use live::LiveAuth;
pub use portal::PortalUser;
pub use slots::{LoginSlots, MAX_LOGINS_IN_FLIGHT};
