//! A real directory for the tests: Debian's OpenLDAP `slapd` on loopback inside a test
//! namespace, with its own configuration, database and (optionally) a TLS certificate in a
//! temporary directory, and a fixture that looks like a small Active Directory:
//!
//! ```text
//! dc=example,dc=org
//! ├── cn=portcullis,ou=services      service account (searches users and groups)
//! ├── ou=people
//! │   ├── uid=alice    in eng, TOTP secret in pcTotpSecret
//! │   ├── uid=bob      in finance
//! │   ├── uid=carol    in contractors, which is a member of eng (nested)
//! │   ├── uid=dave     in eng, disabled (userAccountControl 514, as AD writes it)
//! │   └── uid=erin     in no group
//! ├── ou=elsewhere     a referral (searches from the root get a continuation reference, as
//! │                    Active Directory sends for its DNS and configuration partitions)
//! └── ou=groups        groupOfNames with AD-style binary objectSid values
//!     ├── cn=eng          S-1-5-21-1004336348-1177238915-682003330-1101
//!     ├── cn=finance      S-1-5-21-1004336348-1177238915-682003330-1102
//!     └── cn=contractors  S-1-5-21-1004336348-1177238915-682003330-1103
//! ```
//!
//! `memberOf` is kept by slapd's memberof overlay (so `ldapmodify` of a group updates it, as
//! in AD). OpenLDAP has no AD in-chain matching rule: nested groups are resolved by the
//! agent's client-side walk. Everything is stopped and deleted on drop, also on panic.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    openvpn::{Proc, TempDir},
    NetNs,
};

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PW: &str = "rootsecret";
pub const SERVICE_DN: &str = "cn=portcullis,ou=services,dc=example,dc=org";
pub const SERVICE_PW: &str = "svc-secret";
/// Every fixture user's password is `<name>-pw`.
pub fn password(user: &str) -> String {
    format!("{user}-pw")
}

const DOMAIN_SID: &str = "S-1-5-21-1004336348-1177238915-682003330";
pub fn group_sid(group: &str) -> String {
    let rid = match group {
        "eng" => 1101,
        "finance" => 1102,
        "contractors" => 1103,
        other => panic!("no fixture group {other}"),
    };
    format!("{DOMAIN_SID}-{rid}")
}

/// AD attributes the fixture needs (OpenLDAP does not ship them outside the large
/// msuser.schema). The OIDs are under the documentation arc of RFC 5612's example.
const AD_SCHEMA: &str = r#"
attributetype ( 1.3.6.1.4.1.32473.1.1.1 NAME 'objectSid'
  EQUALITY octetStringMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.2 NAME 'userAccountControl'
  EQUALITY integerMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.1.3 NAME 'pcTotpSecret'
  EQUALITY caseExactMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'pcAdObject' AUXILIARY
  MAY ( objectSid $ userAccountControl $ pcTotpSecret ) )
"#;

/// A running slapd. Drop: SIGCONT (if paused), SIGTERM, SIGKILL after 3 s; files removed.
pub struct Slapd {
    proc: Option<Proc>,
    ns: String,
    pub port: u16,
    pub url: String,
    /// `ldaps://127.0.0.1:<port + 1>` when TLS is on.
    pub ldaps_url: Option<String>,
    /// The CA that issued the directory's certificate (PEM), when TLS is on.
    pub ca_file: Option<PathBuf>,
    conf: PathBuf,
    dir: TempDir,
}

impl Slapd {
    /// Starts slapd in `ns` on 127.0.0.1:`port` (StartTLS, and ldaps on `port + 1`, when
    /// `tls`), loads the
    /// fixture, and returns once it answers.
    pub fn start(ns: &NetNs, port: u16, tls: bool) -> Slapd {
        let mut s = Slapd::prepare(port, tls);
        s.launch(ns);
        s
    }

    /// Writes the configuration and certificates without starting (so an endpoint file can
    /// name the CA before the namespace exists); [`Slapd::launch`] starts it.
    pub fn prepare(port: u16, tls: bool) -> Slapd {
        let dir = TempDir::new("slapd");
        let d = dir.path();
        fs::create_dir_all(d.join("db")).expect("db dir");
        fs::write(d.join("pc-ad.schema"), AD_SCHEMA).expect("schema");
        let mut tls_conf = String::new();
        let mut ca_file = None;
        if tls {
            use portcullis::pki::{CertificateAuthority, Validity};
            let ca =
                CertificateAuthority::generate("directory test CA", Validity::days_from_now(2))
                    .expect("CA");
            let cert = ca
                .issue_server("127.0.0.1", Validity::days_from_now(2))
                .expect("directory certificate");
            fs::write(d.join("ca.crt"), ca.cert_pem()).unwrap();
            fs::write(d.join("slapd.crt"), &cert.cert_pem).unwrap();
            fs::write(d.join("slapd.key"), &cert.key_pem).unwrap();
            tls_conf = format!(
                "TLSCACertificateFile {0}/ca.crt\nTLSCertificateFile {0}/slapd.crt\nTLSCertificateKeyFile {0}/slapd.key\n",
                d.display()
            );
            ca_file = Some(d.join("ca.crt"));
        }
        let conf = d.join("slapd.conf");
        fs::write(
            &conf,
            format!(
                r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {d}/pc-ad.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
{tls_conf}
database mdb
maxsize 16777216
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {d}/db
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by anonymous auth by self write by * none
access to attrs=pcTotpSecret by dn.exact="{SERVICE_DN}" read by * none
access to * by users read by * none
"#,
                d = d.display()
            ),
        )
        .expect("slapd.conf");
        let url = format!("ldap://127.0.0.1:{port}");
        Slapd {
            proc: None,
            ns: String::new(),
            port,
            url,
            ldaps_url: tls.then(|| format!("ldaps://127.0.0.1:{}", port + 1)),
            ca_file,
            conf,
            dir,
        }
    }

    /// Starts slapd in `ns` and loads the fixture (through slapd, so the memberof overlay
    /// writes `memberOf`).
    pub fn launch(&mut self, ns: &NetNs) {
        self.ns = ns.name.clone();
        self.run(ns);
        self.add(&fixture_ldif());
    }

    fn run(&mut self, ns: &NetNs) {
        // -d stats: stay in the foreground (the Proc owns it), logging each operation (one
        // line per bind, which tests count: see `Slapd::binds`).
        let mut listen = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(u) = &self.ldaps_url {
            listen.push_str(&format!(" {u}/"));
        }
        let proc = Proc::spawn(
            ns,
            &[
                "/usr/sbin/slapd",
                "-d",
                "stats",
                "-h",
                &listen,
                "-f",
                &self.conf.to_string_lossy(),
            ],
            &self.dir.path().join("slapd.log"),
            "slapd",
        );
        self.proc = Some(proc);
        let ok = crate::agent::poll(Duration::from_secs(10), || {
            if !self.proc.as_ref().is_some_and(Proc::is_running) {
                return Some(false);
            }
            self.ldap_tool(
                "ldapsearch",
                &["-b", "", "-s", "base", "(objectClass=*)"],
                "",
            )
            .then_some(true)
        });
        assert_eq!(
            ok,
            Some(true),
            "slapd did not start; log:\n{}",
            self.proc
                .as_ref()
                .map(|p| p.log_tail(40))
                .unwrap_or_default()
        );
    }

    /// Runs an ldap-utils tool as the root DN inside the namespace; true on success.
    fn ldap_tool(&self, tool: &str, args: &[&str], input: &str) -> bool {
        let ldif = self.dir.path().join("in.ldif");
        fs::write(&ldif, input).expect("ldif");
        let mut argv = vec![
            "ip", "netns", "exec", &self.ns, "timeout", "10", tool, "-x", "-H", &self.url, "-D",
            ROOT_DN, "-w", ROOT_PW,
        ];
        let path = ldif.to_string_lossy().into_owned();
        if tool != "ldapsearch" {
            argv.extend(["-f", &path]);
        }
        argv.extend(args);
        let o = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .expect("ldap tool");
        if !o.status.success() && tool != "ldapsearch" {
            eprintln!(
                "{tool} failed: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        o.status.success()
    }

    /// How many binds as `dn` slapd has logged (a login's password check is one).
    pub fn binds(&self, dn: &str) -> usize {
        let needle = format!("BIND dn=\"{dn}\" method=");
        std::fs::read_to_string(self.dir.path().join("slapd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// `ldapadd` of `ldif` (panics on failure).
    pub fn add(&self, ldif: &str) {
        assert!(self.ldap_tool("ldapadd", &[], ldif), "ldapadd failed");
    }

    /// `ldapmodify` with `ldif` (panics on failure).
    pub fn modify(&self, ldif: &str) {
        assert!(self.ldap_tool("ldapmodify", &[], ldif), "ldapmodify failed");
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(p) = self.proc.as_ref().filter(|p| p.is_running()) {
            // SAFETY: kill(2) on our own child that is not reaped (Proc holds it).
            unsafe { libc::kill(p.pid() as libc::pid_t, sig) };
        }
    }

    /// Freezes slapd (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Stops slapd (the database stays, [`Slapd::restart`] brings it back).
    pub fn stop(&mut self) {
        self.resume();
        if let Some(p) = self.proc.take() {
            p.stop();
        }
    }

    pub fn restart(&mut self, ns: &NetNs) {
        self.stop();
        self.run(ns);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        // A stopped process only sees SIGTERM once continued.
        self.stop();
    }
}

fn sid_b64(sid: &str) -> String {
    let b = portcullis::auth::directory::sid_from_string(sid).expect("fixture SID");
    portcullis::auth::otp::base64_encode(&b)
}

/// Alice's TOTP secret (base32 of RFC 6238's test seed); the other users have none.
pub const ALICE_TOTP: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

fn user(uid: &str, uac: u32) -> String {
    let totp = if uid == "alice" {
        format!("pcTotpSecret: {ALICE_TOTP}\n")
    } else {
        String::new()
    };
    format!(
        "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nobjectClass: pcAdObject\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {}\nuserAccountControl: {uac}\n{totp}\n",
        password(uid)
    )
}

fn group(cn: &str, members: &[&str]) -> String {
    let mut s = format!(
        "dn: cn={cn},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\nobjectClass: pcAdObject\ncn: {cn}\nobjectSid:: {}\n",
        sid_b64(&group_sid(cn))
    );
    for m in members {
        s.push_str(&format!("member: {m}\n"));
    }
    s.push('\n');
    s
}

pub fn user_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{SUFFIX}")
}

pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},ou=groups,{SUFFIX}")
}

fn fixture_ldif() -> String {
    let mut s = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: ou=elsewhere,{SUFFIX}\nobjectClass: referral\nobjectClass: extensibleObject\nou: elsewhere\nref: ldap://other.invalid/ou=elsewhere,{SUFFIX}\n\n\
         dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: portcullis\nuserPassword: {SERVICE_PW}\n\n"
    );
    // 512 = NORMAL_ACCOUNT, 514 = NORMAL_ACCOUNT | ACCOUNTDISABLE.
    for (u, uac) in [
        ("alice", 512),
        ("bob", 512),
        ("carol", 512),
        ("dave", 514),
        ("erin", 512),
    ] {
        s.push_str(&user(u, uac));
    }
    s.push_str(&group("contractors", &[&user_dn("carol")]));
    s.push_str(&group(
        "eng",
        &[
            &user_dn("alice"),
            &user_dn("dave"),
            &group_dn("contractors"),
        ],
    ));
    s.push_str(&group("finance", &[&user_dn("bob")]));
    s
}
