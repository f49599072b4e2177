//! The web console of a fleet gateway acts on the whole fleet: two `portcullis run` gateways,
//! the console on gw-0 only, bob's stock client on gw-0 and alice's on gw-1. Over HTTPS with
//! curl (a real HTTP client: certificate checked against the PKI's CA, a cookie jar, the
//! sign-in's CSRF cookie and field, the session's CSRF token in every form, as a browser
//! sends them) the dashboard shows both gateways with the published revision each runs, the
//! connections page lists alice's session with gateway gw-1, and terminating that row ends it
//! on gw-1 (her stock client logs HALT, the registry drops it), audited on gw-0 with the
//! gateway; the session then shows among the ended ones, still with its gateway.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tests::agent::poll;
use tests::fleet::{gateway_addresses, underlay_addr, FleetLab};
use tests::NetNs;

use super::{have_etcd, ENG_ALLOWED};

const ADMIN: &str = "ann";
const PASSWORD: &str = "fleet-console-1";
const HALT: &str = "Halt command was pushed by server";

/// gw-0's host-local `[console]` (a publish never carries it), on its underlay address.
fn console_section() -> String {
    let hash = portcullis::console::accounts::hash_password(PASSWORD).unwrap();
    format!(
        "\n[console]\nlisten = \"{}:8443\"\ntls_cert = \"pki/server.crt\"\ntls_key = \"pki/server.key\"\n\
         \n[[console.admin]]\nname = \"{ADMIN}\"\npassword_hash = \"{hash}\"\nrole = \"operator\"\n",
        underlay_addr(0)
    )
}

/// curl in the client namespace against gw-0's console, with one cookie jar. The server
/// certificate (CN `server`) is verified against the lab's CA.
struct Http<'a> {
    ns: &'a NetNs,
    ca: PathBuf,
    jar: PathBuf,
}

struct Page {
    status: u16,
    body: String,
}

impl Http<'_> {
    fn request(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let resolve = format!("server:8443:{}", underlay_addr(0));
        let url = format!("https://server:8443{path}");
        let (ca, jar) = (
            self.ca.to_string_lossy().into_owned(),
            self.jar.to_string_lossy().into_owned(),
        );
        let mut args: Vec<String> = [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-b",
            &jar,
            "-c",
            &jar,
            "-w",
            "\n%{http_code}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in form {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.ns.exec(&refs);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {path}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, code) = text.rsplit_once('\n').expect("curl wrote the status");
        Page {
            status: code.trim().parse().expect("an HTTP status"),
            body: body.to_owned(),
        }
    }

    fn get(&self, path: &str) -> Page {
        self.request(path, &[])
    }
}

/// The value of the first hidden `csrf` field of a page.
fn csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in\n{page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The `<tr ...>...</tr>` of a table's row for `user` on `gateway`, and its session id.
fn row<'p>(page: &'p str, table: &str, user: &str, gateway: &str) -> Option<(u32, &'p str)> {
    let t = page.find(&format!(r#"<table id="{table}""#))?;
    let t = &page[t..page[t..].find("</table>").map(|e| t + e)?];
    t.split("<tr ").skip(1).find_map(|r| {
        let r = &r[..r.find("</tr>")?];
        let mine = r.contains(&format!(r#"data-gateway="{gateway}""#))
            && r.contains(&format!(r#"<td class="user">{user}</td>"#));
        let id = r
            .strip_prefix(r#"data-id=""#)?
            .split('"')
            .next()?
            .parse()
            .ok()?;
        mine.then_some((id, r))
    })
}

#[test]
fn the_console_lists_and_terminates_a_session_on_another_gateway() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let policy = gateway_addresses(2) + ENG_ALLOWED;
    let lab = FleetLab::with_host(2, 1, &["alice", "bob"], &policy, |i| match i {
        0 => console_section(),
        _ => String::new(),
    });
    let (revision, _) = lab.publish(&policy);
    let bob = lab.connect_to("bob", 0);
    let alice = lab.connect_to("alice", 1);
    let http = Http {
        ns: &lab.client,
        ca: lab.pki.dir.join("ca.crt"),
        jar: lab.dir().join("cookies.txt"),
    };

    // Sign in as a browser does: the form page sets the sign-in CSRF cookie and field.
    let form = http.get("/login");
    assert_eq!(form.status, 200, "{}", form.body);
    let signed = http.request(
        "/login",
        &[
            ("csrf", &csrf(&form.body)),
            ("name", ADMIN),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(signed.status, 303, "sign-in refused: {}", signed.body);

    // The dashboard: both gateways, each on the published revision (presence is rewritten
    // at the next keep-alive after a gateway applies it), and the fleet-wide count.
    let dash = poll(Duration::from_secs(10), || {
        let p = http.get("/").body;
        let on_rev = |gw: &str| {
            p.split(r#"<tr data-gateway=""#).any(|r| {
                r.starts_with(&format!("{gw}\""))
                    && r.contains(&format!(r#"<td class="revision">{revision}"#))
            })
        };
        (on_rev("gw-0") && on_rev("gw-1") && p.contains(r#"id="active">2</div>"#)).then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "the dashboard does not show both gateways on revision {revision} and 2 sessions:\n{}",
            http.get("/").body
        )
    });
    assert!(
        dash.contains("This gateway runs published policy revision"),
        "{dash}"
    );
    // The endpoint page shows the same membership next to the running policy.
    let endpoint = http.get("/endpoint").body;
    for gw in ["gw-0", "gw-1"] {
        let tr = format!(
            r#"<tr data-gateway="{gw}"><td class="gateway">{gw}</td><td class="revision">{revision}"#
        );
        assert!(
            endpoint.contains(&tr),
            "{gw} on revision {revision} not on the endpoint page:\n{endpoint}"
        );
    }

    // The connections page lists alice's session on gw-1 (from the registry) and bob's here.
    let page = poll(Duration::from_secs(10), || {
        let p = http.get("/connections").body;
        (row(&p, "connections", "alice", "gw-1").is_some()
            && row(&p, "connections", "bob", "gw-0").is_some())
        .then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "alice on gw-1 and bob on gw-0 not listed:\n{}",
            http.get("/connections").body
        )
    });
    let (id, alice_row) = row(&page, "connections", "alice", "gw-1").unwrap();
    assert!(
        alice_row.contains(r#"<td class="gateway">gw-1</td>"#)
            && alice_row.contains(r#"<input type="hidden" name="gateway" value="gw-1">"#),
        "{alice_row}"
    );
    // The filter finds sessions by gateway.
    let filtered = http.get("/connections?q=gw-1").body;
    assert!(
        row(&filtered, "connections", "alice", "gw-1").is_some(),
        "{filtered}"
    );
    assert!(
        row(&filtered, "connections", "bob", "gw-0").is_none(),
        "{filtered}"
    );

    // Without the session's CSRF token: refused, nothing ended.
    let forged = http.request(
        "/connections/terminate",
        &[("id", &id.to_string()), ("gateway", "gw-1")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(!alice.log().contains(HALT), "ended by a forged form");

    // Terminate alice's row from gw-0's console.
    let asked = Instant::now();
    let done = http.request(
        "/connections/terminate",
        &[
            ("csrf", &csrf(&page)),
            ("id", &id.to_string()),
            ("gateway", "gw-1"),
        ],
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains(&format!(
            "Asked gw-1/{id} to end session {id} on gateway gw-1"
        )),
        "{}",
        done.body
    );
    poll(Duration::from_secs(2), || {
        alice.log().contains(HALT).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's client on gw-1 got no HALT:\n{}\ngw-1:\n{}",
            alice.log(),
            lab.gateways[1].agent().log_tail(20)
        )
    });
    eprintln!(
        "HALT on gw-1's client {:?} after the console's terminate on gw-0",
        asked.elapsed()
    );
    poll(Duration::from_secs(5), || {
        (!lab.gateways[0]
            .connections()
            .iter()
            .any(|c| c["user"] == "alice"))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's session is still registered: {:#?}",
            lab.gateways[0].connections()
        )
    });

    // Audited on gw-0 with the gateway, the account and where it came from.
    let audit = std::fs::read_to_string(lab.gateways[0].dir.path().join("audit.log")).unwrap();
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["action"] == "terminate")
        .collect();
    assert_eq!(entries.len(), 1, "{audit}");
    let e = &entries[0];
    assert_eq!(e["who"], ADMIN, "{e}");
    assert_eq!(
        e["from"],
        format!("console {}", tests::fleet::CLIENT_ADDR),
        "{e}"
    );
    assert_eq!(e["target"], format!("session {id} on gateway gw-1"), "{e}");
    assert_eq!(e["result"], format!("ok: asked gw-1/{id} to end"), "{e}");

    // Gone from the live table, shown among the ended sessions with its gateway; bob stays.
    let after = poll(Duration::from_secs(5), || {
        let p = http.get("/connections").body;
        (row(&p, "connections", "alice", "gw-1").is_none()
            && row(&p, "ended", "alice", "gw-1").is_some())
        .then_some(p)
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's ended session not shown:\n{}",
            http.get("/connections").body
        )
    });
    assert!(
        row(&after, "connections", "bob", "gw-0").is_some(),
        "{after}"
    );
    assert!(!bob.log().contains(HALT), "bob was cut too:\n{}", bob.log());
}
