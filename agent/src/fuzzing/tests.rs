use super::*;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus"))
}

#[test]
fn fuzz_corpus_replays() {
    let root = corpus_dir();
    let mut total = 0;
    for (name, body) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.expect("readable dir entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for f in files {
            let bytes = std::fs::read(&f).expect("readable corpus file");
            let run = std::panic::catch_unwind(|| body(&bytes));
            assert!(run.is_ok(), "{name} failed on {}", f.display());
            total += 1;
        }
    }
    // Every corpus directory belongs to a target (a typo would silently skip seeds).
    for e in std::fs::read_dir(&root).expect("corpus root") {
        let name = e.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "corpus/{name} has no target"
        );
    }
    assert!(total > 0);
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_bin() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("fuzzing::{name}(")),
            "{name}.rs calls another body"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

// --- Seeds of the TAP and admin targets (the OpenVPN ones: openvpn/fuzzing/tests.rs) -----
//
// `cargo test -p portcullis-agent --lib write_seed_corpus -- --ignored` (re)writes them.

/// An IPv4 header from `src` to `dst` (checksum not needed: nothing here verifies it),
/// padded with `extra` payload bytes.
fn ipv4(src: [u8; 4], dst: [u8; 4], extra: usize) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, (20 + extra) as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.resize(20 + extra, 0xab);
    p
}

fn ether(ip: Vec<u8>) -> Vec<u8> {
    let mut f = vec![0x02, 0x50, 10, 8, 0, 1, 0x02, 0x50, 10, 8, 0, 3, 0x08, 0x00];
    f.extend(ip);
    f
}

/// A `tap` record: op, who, then the body (its length a multiple of 8).
fn record(op: u8, who: u8, body: Vec<u8>) -> Vec<u8> {
    assert_eq!(body.len() % 8, 0, "records carry multiples of 8 bytes");
    let mut r = vec![op, who, (body.len() / 8) as u8];
    r.extend(body);
    r
}

/// The highest sender byte forges the next session's address: `who + 1` once overflowed a
/// u8 there (a harness fault the release-built fuzz campaign, without overflow checks, could
/// not see; this proptest found it).
#[test]
fn the_highest_sender_byte_forges_the_next_session() {
    tap(&record(1, 255, ipv4([10, 8, 0, 3], [10, 0, 0, 5], 4)));
}

fn tap_seeds() -> Seeds {
    let (s0, s1) = ([10, 8, 0, 2], [10, 8, 0, 3]);
    vec![
        (
            "to-a-session",
            record(0, 0, ether(ipv4([10, 0, 0, 5], s1, 6))),
        ),
        (
            "to-nobody",
            record(0, 0, ether(ipv4([10, 0, 0, 5], [10, 8, 0, 99], 6))),
        ),
        (
            "from-its-own-address",
            record(1, 1, ipv4(s1, [10, 0, 0, 5], 4)),
        ),
        (
            "spoofing-another-session",
            record(1, 0, ipv4(s1, [10, 0, 0, 5], 4)),
        ),
        (
            "from-another-sessions-link",
            record(1, 0x80, ipv4(s0, [10, 0, 0, 5], 4)),
        ),
        (
            "framed-own-and-spoofed",
            [
                record(2, 0, ipv4(s0, [10, 0, 0, 5], 4)),
                record(2, 0, ipv4(s1, [10, 0, 0, 5], 4)),
            ]
            .concat(),
        ),
    ]
}

fn admin_seeds() -> Seeds {
    [
        ("status", r#"{"v":1,"cmd":"status"}"#),
        ("reload", "{\"cmd\":\"reload\"}\n"),
        ("connections", "{\"cmd\":\"connections\"}\r\n"),
        ("terminate-id", r#"{"cmd":"terminate","id":8}"#),
        ("terminate-user", r#"{"cmd":"terminate","user":"bob\n"}"#),
        ("policy", r#"{"cmd":"policy"}"#),
        (
            "explain",
            r#"{"cmd":"explain","user":"alice","to":"10.0.0.5:443/tcp"}"#,
        ),
        ("certificates", r#"{"cmd":"certificates"}"#),
        ("revoke-name", r#"{"cmd":"revoke","name":"<script>\n"}"#),
        ("revoke-serial", r#"{"cmd":"revoke","serial":"0a1b"}"#),
        (
            "logs",
            r#"{"cmd":"logs","log":"flows","query":{"user":"bob","limit":5}}"#,
        ),
        ("version-2", r#"{"v":2,"cmd":"status"}"#),
        ("not-json", "status please"),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.as_bytes().to_vec()))
    .chain([("not-utf8", b"{\"cmd\":\"st\xffatus\"}".to_vec())])
    .collect()
}

/// Named seeds of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn seed_sets() -> [(&'static str, Seeds); 2] {
    [("tap", tap_seeds()), ("admin_request", admin_seeds())]
}

#[test]
#[ignore = "writes the seed corpus; run by hand after changing a seed builder"]
fn write_seed_corpus() {
    for (target, seeds) in seed_sets() {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

#[test]
fn seeds_are_current() {
    for (target, seeds) in seed_sets() {
        for (name, bytes) in seeds {
            let f = corpus_dir().join(target).join(format!("seed-{name}"));
            let on_disk = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(
                on_disk == bytes,
                "{} is stale: run write_seed_corpus",
                f.display()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn random_bytes_never_break_a_target(
        target in 0..TARGETS.len(),
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        (TARGETS[target].1)(&bytes);
    }
}
