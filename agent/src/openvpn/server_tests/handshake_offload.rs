//! Handshakes whose TLS steps run away from the server (`Server::set_handshake_offload`, what
//! `io` does with its pool): many at once, steps run on other threads and handed back in
//! another order than they were made. Each session must still see its bytes in order (one
//! step out at a time), connect with its own keys, and the limits must hold while steps are
//! out.
use super::*;
use crate::openvpn::server::{AuthMode, HandshakeWork};

/// Clients at their own links, the steps they caused, and the server, moved until quiet.
struct Crowd {
    clients: Vec<(Link, TestClient)>,
    /// Steps made and not yet handed back.
    out: Vec<HandshakeWork>,
    steps_made: usize,
    /// The most steps one session had out at once.
    most_out_per_session: usize,
}

impl Crowd {
    fn new(lab: &Lab, n: u16) -> Crowd {
        Crowd {
            clients: (0..n)
                .map(|i| (link(30_000 + i), lab.client(&format!("user{i}"))))
                .collect(),
            out: Vec::new(),
            steps_made: 0,
            most_out_per_session: 0,
        }
    }

    /// Packets both ways, then the steps the server made are collected (not run).
    fn exchange(&mut self, lab: &mut Lab) -> bool {
        let mut moved = false;
        for (l, c) in &mut self.clients {
            for p in c.poll_transmit(lab.now) {
                moved = true;
                lab.server.handle_control(*l, &p, lab.now);
            }
        }
        while let Some((to, p)) = lab.server.poll_transmit() {
            if let Some((_, c)) = self.clients.iter_mut().find(|(l, _)| *l == to) {
                moved = true;
                c.on_packet(&p, lab.now);
            }
        }
        while let Some(w) = lab.server.poll_handshake_work() {
            moved = true;
            self.steps_made += 1;
            self.out.push(w);
        }
        for (l, _) in &self.clients {
            let n = self.out.iter().filter(|w| w.link() == *l).count();
            self.most_out_per_session = self.most_out_per_session.max(n);
        }
        moved
    }

    /// Runs every step out on its own thread and hands them back last-made first.
    fn run_steps_reversed(&mut self, lab: &mut Lab) {
        let threads: Vec<_> = self
            .out
            .drain(..)
            .map(|mut w| {
                std::thread::spawn(move || {
                    w.run();
                    w
                })
            })
            .collect();
        let mut done: Vec<HandshakeWork> = threads
            .into_iter()
            .map(|t| t.join().expect("step thread"))
            .collect();
        done.reverse();
        for w in done {
            lab.server.finish_handshake_work(w, lab.now);
        }
    }
}

#[test]
fn offloaded_handshakes_finish_in_any_order_each_with_its_own_keys() {
    for tc in [true, false] {
        let mut lab = Lab::new(tc);
        lab.server.set_handshake_offload(true);
        let mut crowd = Crowd::new(&lab, 12);
        for _ in 0..200 {
            let moved = crowd.exchange(&mut lab);
            let stepped = !crowd.out.is_empty();
            crowd.run_steps_reversed(&mut lab);
            if !moved && !stepped {
                break;
            }
            lab.now += Duration::from_millis(1);
            lab.server.handle_timeout(lab.now);
        }
        // Two per handshake at least: the ClientHello, and the client's certificate flight.
        assert!(
            crowd.steps_made >= 2 * crowd.clients.len(),
            "the TLS work went out in steps: {}",
            crowd.steps_made
        );
        assert_eq!(
            crowd.most_out_per_session, 1,
            "one step per session at a time"
        );
        let evs = lab.events();
        let conn = connected(&evs);
        assert_eq!(conn.len(), crowd.clients.len(), "{evs:?}");
        let peers = lab.server.peers();
        for (i, (l, c)) in crowd.clients.iter_mut().enumerate() {
            let addr = c
                .pushed_addr()
                .unwrap_or_else(|| panic!("client {i} (tls-crypt {tc}) has no push"));
            let (peer_id, cn, _) = conn
                .iter()
                .find(|(_, _, a)| *a == addr)
                .expect("a Connected event for the pushed address");
            assert_eq!(cn, &format!("user{i}"));
            // The client's keys are its session's: the server opens its packet as that
            // session's (keys mixed between sessions would fail the tag).
            let plain = ip_packet(addr);
            let mut pkt = c.seal(&plain).unwrap();
            let (v, _) = peers.open(*l, &mut pkt, lab.now);
            let DataVerdict::Tunnel {
                range, peer_id: p, ..
            } = v
            else {
                panic!("client {i}: {v:?}");
            };
            assert_eq!(p, *peer_id);
            assert_eq!(&pkt[range], &plain[..]);
        }
    }
}

/// A step handed back after its session ended (here: the client restarted from the same
/// address) is dropped; the new session's handshake is not disturbed by it.
#[test]
fn a_step_of_an_ended_session_is_dropped() {
    let mut lab = Lab::new(true);
    lab.server.set_handshake_offload(true);
    let l = link(31_000);
    let mut first = lab.client("alice");
    let mut stale = None;
    for _ in 0..20 {
        for p in first.poll_transmit(lab.now) {
            lab.server.handle_control(l, &p, lab.now);
        }
        while let Some((_, p)) = lab.server.poll_transmit() {
            first.on_packet(&p, lab.now);
        }
        if let Some(w) = lab.server.poll_handshake_work() {
            stale = Some(w);
            break;
        }
        lab.now += Duration::from_millis(1);
    }
    let mut stale = stale.expect("the ClientHello went out as a step");
    assert_eq!(lab.server.session_count(), 1);
    // The client restarts: a new session replaces the old one at the same link.
    let mut second = lab.client("alice");
    let mut crowd = Crowd {
        clients: vec![(l, second)],
        out: Vec::new(),
        steps_made: 0,
        most_out_per_session: 0,
    };
    // Its reset, then its first packet after the cookie, which replaces the old session.
    crowd.exchange(&mut lab);
    crowd.exchange(&mut lab);
    assert_eq!(
        disconnected(&lab.events()),
        vec![CloseReason::Server(
            "client restarted with a new session".into()
        )]
    );
    // The old session's step comes back now, run.
    stale.run();
    lab.server.finish_handshake_work(stale, lab.now);
    for _ in 0..200 {
        let moved = crowd.exchange(&mut lab);
        let stepped = !crowd.out.is_empty();
        crowd.run_steps_reversed(&mut lab);
        if !moved && !stepped {
            break;
        }
        lab.now += Duration::from_millis(1);
        lab.server.handle_timeout(lab.now);
    }
    second = crowd.clients.pop().unwrap().1;
    assert!(second.push_reply.is_some(), "{:?}", lab.events());
    assert_eq!(lab.server.session_count(), 1);
}

/// The half-open limit per source holds while steps are out (never handed back here).
#[test]
fn half_open_limit_holds_with_steps_out() {
    let mut lab = Lab::with(false, |s| {
        s.max_sessions = 64;
        s.auth = AuthMode::External;
    });
    lab.server.set_handshake_offload(true);
    let mut crowd = Crowd::new(&lab, 40);
    for _ in 0..20 {
        crowd.exchange(&mut lab);
        lab.now += Duration::from_millis(1);
    }
    assert_eq!(lab.server.session_count(), 16);
    assert_eq!(lab.server.stats.half_open_limit, 24);
    assert_eq!(crowd.out.len(), 16, "one step per admitted session");
    assert_eq!(crowd.most_out_per_session, 1);
}
