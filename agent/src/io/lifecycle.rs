//! Session lifecycle reports from the workers (a client's exit, a float) that found the
//! control channel full. A flood of control packets may fill that channel; dropping a
//! packet there is harmless (the client retransmits), but a dropped `Exit` would leave the
//! session holding its address until the ping timeout, and a dropped `Floated` would leave
//! the session's replies going to the old address. They wait here instead, and the control
//! thread takes them on its next turn (at least every 200 ms).
//!
//! Memory is bounded without a cap: reports come only from authenticated data packets of
//! sessions in the peer table, and are kept per session serial (an `Exit` and the newest
//! float), so there are never more entries than sessions.
use std::collections::HashMap;
use std::sync::Mutex;

use super::Ctl;
use crate::openvpn::peer::Float;

#[derive(Default)]
pub(super) struct Deferred {
    by_session: Mutex<HashMap<u64, Pending>>,
}

#[derive(Default)]
struct Pending {
    float: Option<Float>,
    /// The peer id of an `Exit`.
    exit: Option<u32>,
}

impl Deferred {
    /// Keeps an `Exit` or `Floated` for the control thread; other messages are not kept.
    pub(super) fn push(&self, m: Ctl) {
        let mut map = self.by_session.lock().unwrap_or_else(|e| e.into_inner());
        match m {
            Ctl::Exit(peer_id, session) => map.entry(session).or_default().exit = Some(peer_id),
            // Workers may report floats in any order; `Server::floated` follows the peer to
            // wherever it is now, so the newest report per session is enough.
            Ctl::Floated(f) => map.entry(f.session).or_default().float = Some(f),
            _ => {}
        }
    }

    /// What waits, floats before exits (a session that floated and then exited ends at its
    /// new address).
    pub(super) fn take(&self) -> Vec<Ctl> {
        let taken = std::mem::take(&mut *self.by_session.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out: Vec<Ctl> = taken
            .values()
            .filter_map(|p| p.float.map(Ctl::Floated))
            .collect();
        out.extend(
            taken
                .iter()
                .filter_map(|(s, p)| p.exit.map(|id| Ctl::Exit(id, *s))),
        );
        out
    }
}
