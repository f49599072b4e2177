//! Differential tests: the incremental parse must give exactly what a full parse gives (the
//! same configuration, so the same compiled maps), over random files and random edits, and
//! fall back to the full parse for the shapes it does not handle.
use proptest::prelude::*;

use super::*;
use crate::policy::compile::compile;

const HEAD: &str = "name = \"lab\"\nclient_cidr = \"10.100.0.0/24\"\nlisten = [\"udp://10.99.0.1:1194\"]\n\n[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\nclient_ca = \"ca.crt\"\n\n[[target_network]]\nname = \"private\"\ninterface = \"eth1\"\nsnat_address = \"10.0.0.1\"\n";

fn resolver(name: &str) -> Option<u32> {
    (name == "eth1").then_some(2)
}

/// Parses `text` with `cache` and in full; both must agree (and compile to the same maps).
fn agree(cache: &mut RuleCache, text: &str) -> ParseStats {
    let full = EndpointConfig::parse(text);
    let inc = cache.parse(text);
    match (&full, &inc) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "incremental parse differs for:\n{text}");
            let (ca, cb) = (
                compile(&a.policy(), &resolver),
                compile(&b.policy(), &resolver),
            );
            assert_eq!(
                ca.map_err(|e| format!("{e:?}")),
                cb.map_err(|e| format!("{e:?}"))
            );
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!(
            "full and incremental parse disagree on:\n{text}\nfull: {:?}\nincremental: {:?}",
            full.map(|_| ()),
            inc.map(|_| ())
        ),
    }
    cache.last
}

/// One block of a generated file.
fn block() -> impl Strategy<Value = String> {
    let dest = (0u8..6, prop_oneof![Just(32u8), Just(24), Just(16)])
        .prop_map(|(h, l)| format!("10.0.{h}.0/{l}"));
    let groups = proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c"]), 0..3);
    let rule = (
        dest.clone(),
        groups,
        any::<bool>(),
        proptest::option::of("[a-z ]{0,8}"),
        any::<bool>(),
    )
        .prop_map(|(d, g, all, desc, comment)| {
            let mut s = format!(
                "\n[[authorization_rule]]{}\ndestination = \"{d}\"\n",
                if comment { " # a rule" } else { "" }
            );
            if !g.is_empty() {
                s += &format!("groups = {g:?}\n");
            }
            if all {
                s += "all_users = true\n";
            }
            if let Some(x) = desc {
                s += &format!("description = \"{x}\"\n");
            }
            s
        });
    prop_oneof![
        6 => rule,
        1 => dest.clone().prop_map(|d| format!("\n[[route]]\ndestination = \"{d}\"\ntarget_network = \"private\"\n")),
        1 => Just("\n# [[authorization_rule]] commented out\n# destination = \"10.0.9.0/24\"\n".to_string()),
        1 => Just("\n[[security_group]]\nname = \"sg\"\n".to_string()),
        // Broken sections: both parses must refuse them alike.
        1 => Just("\n[[authorization_rule]]\ndestination = \"not an address\"\n".to_string()),
        1 => Just("\n[[authorization_rule]]\nbogus = 1\n".to_string()),
    ]
}

#[derive(Clone, Debug)]
enum Edit {
    Replace(usize, String),
    Insert(usize, String),
    Remove(usize),
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), block()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), block()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

fn apply(blocks: &mut Vec<String>, e: &Edit) {
    let n = blocks.len();
    match e {
        Edit::Replace(i, b) if n > 0 => blocks[i % n] = b.clone(),
        Edit::Insert(i, b) => blocks.insert(i % (n + 1), b.clone()),
        Edit::Remove(i) if n > 0 => {
            blocks.remove(i % n);
        }
        Edit::Swap(i, j) if n > 0 => blocks.swap(i % n, j % n),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// A sequence of edits through one cache: every version parses as in full.
    #[test]
    fn incremental_equals_full_over_edits(
        blocks in proptest::collection::vec(block(), 0..12),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let mut cache = RuleCache::default();
        let mut blocks = blocks;
        agree(&mut cache, &(HEAD.to_string() + &blocks.concat()));
        for e in &edits {
            apply(&mut blocks, e);
            agree(&mut cache, &(HEAD.to_string() + &blocks.concat()));
        }
    }
}

fn rules(n: usize, changed: Option<usize>) -> String {
    let mut s = HEAD.to_string();
    for i in 0..n {
        let host = if Some(i) == changed { 250 } else { i % 250 };
        s += &format!(
            "\n[[authorization_rule]]\ndestination = \"10.1.{}.{host}/32\"\nall_users = true\n",
            i / 250
        );
    }
    s
}

#[test]
fn one_changed_rule_parses_one_section() {
    let mut cache = RuleCache::default();
    let first = agree(&mut cache, &rules(500, None));
    assert_eq!(
        first,
        ParseStats {
            sections: 500,
            parsed: 500,
            full: false
        }
    );
    let again = agree(&mut cache, &rules(500, Some(7)));
    assert_eq!(
        again,
        ParseStats {
            sections: 500,
            parsed: 1,
            full: false
        }
    );
    // Back to the first file: the old text of rule 7 was dropped from the cache.
    assert_eq!(agree(&mut cache, &rules(500, None)).parsed, 1);
}

#[test]
fn shapes_it_does_not_handle_take_the_full_parse() {
    let rule = "\n[[authorization_rule]]\ndestination = \"10.0.0.0/24\"\nall_users = true\n";
    let cases = [
        // The alias spelling.
        format!("{HEAD}\n[[authorization_rules]]\ndestination = \"10.0.0.0/24\"\n"),
        // Multi-line strings: a header line could be inside one.
        format!("{HEAD}{rule}description = \"\"\"\n[[authorization_rule]]\n\"\"\"\n"),
        // A header inside an open array (invalid TOML: both must refuse it).
        format!("{HEAD}dns = [\n{rule}]\n"),
        format!("{HEAD}\n[[route]]\ndestination = \"10.0.0.0/24\"\ntarget_network = \"private\"\nx = [\n{rule}\n[[route]]\n"),
        // An inline array of rules next to a rule section.
        format!("authorization_rule = []\n{HEAD}{rule}"),
        // A sub-table of a rule.
        format!("{HEAD}{rule}[authorization_rule.x]\ny = 1\n"),
        // Not TOML at all.
        format!("{HEAD}{rule}destination = \n"),
    ];
    for text in &cases {
        let mut cache = RuleCache::default();
        assert!(
            agree(&mut cache, text).full,
            "expected the full parse for:\n{text}"
        );
    }
    // A commented-out rule or a rule header with a comment is fine.
    let mut cache = RuleCache::default();
    let text = format!("{HEAD}# [[authorization_rule]]\n[[authorization_rule]] # x\ndestination = \"10.0.0.0/24\"\n");
    assert!(!agree(&mut cache, &text).full);
}

#[test]
fn many_new_sections_take_one_parse_of_the_file_and_fill_the_cache() {
    let mut cache = RuleCache::default();
    // A first load and a wholesale replace: more than a quarter of the sections are new.
    let mut text = rules(400, None);
    text += "\n[[route]]\ndestination = \"10.1.0.0/16\"\ntarget_network = \"private\"\n";
    text += "\n[[authorization_rule]] # twice the same text\ndestination = \"10.1.9.9/32\"\ngroups = [\"a\"]\n";
    text += "\n[[authorization_rule]] # twice the same text\ndestination = \"10.1.9.9/32\"\ngroups = [\"a\"]\n";
    let first = agree(&mut cache, &text);
    assert_eq!(
        (first.sections, first.parsed, first.full),
        (402, 402, false)
    );
    // The cache it filled serves the next, small change.
    let edited = text.replace("10.1.0.7/32", "10.1.0.251/32");
    assert_eq!(agree(&mut cache, &edited).parsed, 1);
    let replaced = edited.replace("10.1.0.", "10.1.5.");
    // 250 of 402 new: the whole file is parsed again.
    assert_eq!(agree(&mut cache, &replaced).parsed, 402);
    assert_eq!(agree(&mut cache, &replaced).parsed, 0);
}
