use super::*;

const CAPTURE_PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\n\
    IV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n\
    IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n";
const CAPTURE_CLIENT_OPTIONS_UDP: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,\
    proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
/// client.log line 717: the PUSH_REPLY of the stock 2.6.14 server in run (a).
const CAPTURE_PUSH_REPLY: &str = "PUSH_REPLY,route 10.100.0.0 255.255.0.0,\
    dhcp-option DNS 10.99.0.1,redirect-gateway def1 bypass-dhcp,route-gateway 10.99.0.1,\
    topology subnet,ping 10,ping-restart 60,ifconfig 10.99.0.2 255.255.255.0,peer-id 0,\
    cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500";

#[test]
fn capture_peer_info() {
    let p = PeerInfo::parse(CAPTURE_PEER_INFO);
    assert_eq!(p.skipped_lines, 0);
    assert_eq!(p.entries.len(), 10);
    assert_eq!(p.version(), Some("2.6.14"));
    assert_eq!(p.platform(), Some("linux"));
    assert_eq!(p.ncp(), Some(2));
    assert_eq!(p.mtu(), Some(1600));
    assert!(p.tcpnl());
    assert!(p.compression_stub_only());
    assert_eq!(
        p.ciphers().unwrap().collect::<Vec<_>>(),
        ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]
    );
    // 990 = 2+4+8+16+64+128+256+512 (§5.5).
    let b = p.proto;
    assert_eq!(b, IvProto(990));
    assert!(b.data_v2() && b.request_push() && b.tls_key_export() && b.auth_pending_kw());
    assert!(b.dns_option() && b.cc_exit_notify() && b.auth_fail_temp() && b.dyn_tls_crypt());
    assert!(!b.ncp_p2p());
}

#[test]
fn garbage_peer_info_is_skipped_not_fatal() {
    let p = PeerInfo::parse(
        "no equals sign\n=novalue\nIV_PLAT=li\x01nux\nIV_PROTO=abc\r\nIV_VER=2.6.0\r\n\n",
    );
    assert_eq!(p.skipped_lines, 3);
    assert_eq!(p.version(), Some("2.6.0"));
    assert_eq!(p.platform(), None);
    assert_eq!(
        p.proto,
        IvProto(0),
        "non-numeric IV_PROTO counts as no bits"
    );
    let many: String = (0..500).map(|i| format!("K{i}=v\n")).collect();
    let p = PeerInfo::parse(&many);
    assert_eq!(p.entries.len(), PEER_INFO_MAX_ENTRIES);
    assert_eq!(p.skipped_lines, 500 - PEER_INFO_MAX_ENTRIES);
    assert_eq!(PeerInfo::parse(""), PeerInfo::default());
}

#[test]
fn ncp_first_server_cipher_in_iv_ciphers() {
    let p = PeerInfo::parse(CAPTURE_PEER_INFO);
    let o = CAPTURE_CLIENT_OPTIONS_UDP;
    assert_eq!(negotiate_cipher(&Cipher::ALL, &p, o), Ok(Cipher::Aes256Gcm));
    assert_eq!(
        negotiate_cipher(&[Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm], &p, o),
        Ok(Cipher::ChaCha20Poly1305)
    );
    let p = PeerInfo::parse("IV_CIPHERS=AES-128-GCM\n");
    assert_eq!(negotiate_cipher(&Cipher::ALL, &p, o), Ok(Cipher::Aes128Gcm));
    // With IV_CIPHERS present, IV_NCP and the options string do not widen the list.
    let p = PeerInfo::parse("IV_NCP=2\nIV_CIPHERS=CHACHA20-POLY1305\n");
    assert_eq!(
        negotiate_cipher(&[Cipher::Aes256Gcm], &p, o).map_err(|_| ()),
        Err(())
    );
}

#[test]
fn ncp_unknown_ciphers() {
    let p = PeerInfo::parse("IV_CIPHERS=BF-CBC:AES-256-CBC:::FOO\n");
    let e = negotiate_cipher(&Cipher::ALL, &p, CAPTURE_CLIENT_OPTIONS_UDP).unwrap_err();
    assert!(e.offered.contains("BF-CBC"));
    assert_eq!(
        e.auth_failed_message(),
        "AUTH_FAILED,Data channel cipher negotiation failed (no shared cipher)"
    );
    // Case-insensitive names, unknown ones mixed in.
    let p = PeerInfo::parse("IV_CIPHERS=BF-CBC:chacha20-poly1305\n");
    assert_eq!(
        negotiate_cipher(&Cipher::ALL, &p, ""),
        Ok(Cipher::ChaCha20Poly1305)
    );
}

#[test]
fn ncp_fallbacks_without_iv_ciphers() {
    // IV_NCP=2 implies both GCM ciphers.
    let p = PeerInfo::parse("IV_NCP=2\n");
    assert_eq!(
        negotiate_cipher(&[Cipher::ChaCha20Poly1305, Cipher::Aes128Gcm], &p, ""),
        Ok(Cipher::Aes128Gcm)
    );
    // Then the options string's cipher ("poor man's NCP").
    let p = PeerInfo::parse("IV_VER=2.3.18\n");
    let o = "V4,dev-type tun,cipher CHACHA20-POLY1305,key-method 2,tls-client";
    assert_eq!(
        negotiate_cipher(&Cipher::ALL, &p, o),
        Ok(Cipher::ChaCha20Poly1305)
    );
    let o = "V4,dev-type tun,cipher BF-CBC,key-method 2,tls-client";
    assert!(negotiate_cipher(&Cipher::ALL, &p, o).is_err());
    assert!(negotiate_cipher(&Cipher::ALL, &p, "").is_err());
    assert!(negotiate_cipher(&[], &PeerInfo::parse(CAPTURE_PEER_INFO), "").is_err());
}

#[test]
fn key_derivation_and_protocol_flags() {
    let full = IvProto(990);
    assert_eq!(
        choose_key_derivation(full, false),
        Ok(KeyDerivation::TlsEkm)
    );
    assert_eq!(choose_key_derivation(IvProto(2), false), Err(EkmRequired));
    assert_eq!(
        choose_key_derivation(IvProto(2), true),
        Ok(KeyDerivation::LegacyPrf)
    );
    assert!(EkmRequired
        .auth_failed_message()
        .starts_with("AUTH_FAILED,"));
    assert_eq!(
        protocol_flags_option(full, KeyDerivation::TlsEkm).as_deref(),
        Some("protocol-flags cc-exit tls-ekm")
    );
    assert_eq!(
        protocol_flags_option(IvProto(8), KeyDerivation::TlsEkm).as_deref(),
        Some("key-derivation tls-ekm")
    );
    assert_eq!(
        protocol_flags_option(IvProto(128), KeyDerivation::LegacyPrf).as_deref(),
        Some("protocol-flags cc-exit")
    );
    assert_eq!(
        protocol_flags_option(IvProto(2), KeyDerivation::LegacyPrf),
        None
    );
}

fn capture_like_reply() -> PushReply {
    let peer = PeerInfo::parse(CAPTURE_PEER_INFO);
    PushReply {
        routes: vec!["10.100.0.0/16".parse().unwrap()],
        dns: vec![Ipv4Addr::new(10, 99, 0, 1)],
        redirect_gateway: Some(RedirectGateway { bypass_dhcp: true }),
        route_gateway: Ipv4Addr::new(10, 99, 0, 1),
        ifconfig: "10.99.0.2/24".parse().unwrap(),
        ping: 10,
        ping_restart: 60,
        peer_id: Some(0),
        cipher: negotiate_cipher(&Cipher::ALL, &peer, CAPTURE_CLIENT_OPTIONS_UDP).unwrap(),
        protocol_flags: protocol_flags_option(peer.proto, KeyDerivation::TlsEkm),
        tun_mtu: peer.mtu().map(|_| 1500),
        session_timeout: None,
        auth_token: None,
        auth_token_user: None,
        echo: Vec::new(),
    }
}

#[test]
fn push_reply_matches_capture() {
    // Same configuration as run (a)'s server. The only difference from the stock server is
    // `dyn-tls-crypt`, which we must not push until it is implemented (§11.5).
    let msgs = capture_like_reply().build().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0], CAPTURE_PUSH_REPLY.replace(" dyn-tls-crypt", ""));
    let wire = encode_control_message(&msgs[0]).unwrap();
    assert_eq!(wire.last(), Some(&0));
}

#[test]
fn push_reply_split_tunnel_and_extras() {
    let mut r = capture_like_reply();
    r.redirect_gateway = None;
    r.routes.push("192.168.7.0/24".parse().unwrap());
    r.peer_id = None;
    r.protocol_flags = None;
    r.tun_mtu = None;
    r.session_timeout = Some(28800);
    r.auth_token = Some("SESS_ID_abc123".into());
    let m = &r.build().unwrap()[0];
    assert!(
        m.starts_with("PUSH_REPLY,route 10.100.0.0 255.255.0.0,route 192.168.7.0 255.255.255.0,")
    );
    assert!(!m.contains("redirect-gateway") && !m.contains("peer-id"));
    assert!(m.ends_with(",session-timeout 28800,auth-token SESS_ID_abc123"));
}

#[test]
fn banner_becomes_echo_options_last() {
    let long = "x".repeat(450);
    let banner = format!("Authorized use only.\n\n{long}\n");
    let echo = banner_echo_options("corp", &banner);
    assert_eq!(
        echo,
        vec![
            "echo msg Authorized use only.".to_owned(),
            "echo msg  ".to_owned(),
            format!("echo msg-n {}", "x".repeat(200)),
            format!("echo msg-n {}", "x".repeat(200)),
            format!("echo msg {}", "x".repeat(50)),
            "echo msg-window corp".to_owned(),
        ]
    );
    assert!(banner_echo_options("corp", "").is_empty());
    let mut r = capture_like_reply();
    r.echo = echo.clone();
    let opts = r.options().unwrap();
    assert_eq!(&opts[opts.len() - echo.len()..], &echo[..]);
}

#[test]
fn push_reply_continuation() {
    let mut r = capture_like_reply();
    r.routes = (0..200u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0A00_0000 | (i << 8)), 24).unwrap())
        .collect();
    let msgs = r.build().unwrap();
    assert!(msgs.len() > 1);
    let n = msgs.len();
    let mut rebuilt = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() < PUSH_BUNDLE_SIZE, "part {i} is {} bytes", m.len());
        assert!(m.starts_with("PUSH_REPLY,"));
        let marker = if i + 1 == n {
            ",push-continuation 1"
        } else {
            ",push-continuation 2"
        };
        let body = m.strip_suffix(marker).expect("marker");
        rebuilt.extend(body.split(',').skip(1).map(str::to_owned));
    }
    assert_eq!(rebuilt, r.options().unwrap(), "nothing lost or reordered");
    // A reply exactly at the limit is not split; one byte more is.
    let opts: Vec<String> = vec!["x".repeat(100); 3];
    let one = split_push_reply(&opts, 10 + 3 * 101 + 1).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(split_push_reply(&opts, 10 + 3 * 101).unwrap().len(), 2);
}

#[test]
fn bad_push_options_are_refused() {
    let mut r = capture_like_reply();
    r.auth_token = Some("tok,route 0.0.0.0 0.0.0.0".into());
    assert!(matches!(r.build(), Err(OptionsError::BadPushOption(_))));
    r.auth_token = Some("tok\nHALT".into());
    assert!(matches!(r.build(), Err(OptionsError::BadPushOption(_))));
    r.auth_token = Some("t".repeat(300));
    assert!(matches!(r.build(), Err(OptionsError::BadPushOption(_))));
    r.auth_token = None;
    r.peer_id = Some(NO_PEER_ID);
    assert_eq!(r.build(), Err(OptionsError::BadPeerId(NO_PEER_ID)));
    assert!(validate_push_option("").is_err());
}

#[test]
fn control_messages_split_and_classify() {
    let buf = b"PUSH_REQUEST\0EXIT\r\n\0\0CR_RESPONSE,dGVzdA==\0INFO,hello\0";
    let v: Vec<_> = control_messages(buf).collect();
    assert_eq!(
        v,
        vec![
            Ok(ControlMessage::PushRequest),
            Ok(ControlMessage::Exit),
            Ok(ControlMessage::CrResponse("dGVzdA==")),
            Ok(ControlMessage::Other("INFO,hello")),
        ]
    );
}

#[test]
fn garbage_control_messages_are_rejected() {
    let buf = b"PUSH_\x01REQUEST\0caf\xc3\xa9\0\xff\xfe\0PUSH_REQUEST\0tail";
    let v: Vec<_> = control_messages(buf).collect();
    assert_eq!(
        v,
        vec![
            Err(OptionsError::NonPrintable(5)),
            Err(OptionsError::NonPrintable(3)),
            Err(OptionsError::NonPrintable(0)),
            Ok(ControlMessage::PushRequest),
            Err(OptionsError::Unterminated),
        ]
    );
    // A buffer without any NUL is dropped whole.
    assert_eq!(
        control_messages(b"PUSH_REQUEST").collect::<Vec<_>>(),
        vec![Err(OptionsError::Unterminated)]
    );
    let big = vec![b'A'; 3000];
    assert_eq!(
        control_messages(&big).collect::<Vec<_>>(),
        vec![Err(OptionsError::TooLong(3000))]
    );
    let mut big_term = big.clone();
    big_term.push(0);
    big_term.extend_from_slice(b"EXIT\0");
    assert_eq!(
        control_messages(&big_term).collect::<Vec<_>>(),
        vec![Err(OptionsError::TooLong(3001)), Ok(ControlMessage::Exit)]
    );
    assert_eq!(control_messages(b"").count(), 0);
    assert_eq!(control_messages(b"\0\0\r\n\0").count(), 0);
    // Deterministic pseudo-random garbage never panics.
    let mut x: u32 = 1;
    let g: Vec<u8> = (0..4096)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    for m in control_messages(&g).flatten() {
        if let ControlMessage::Other(s) = m {
            assert!(is_printable(s.as_bytes()));
        }
    }
}

#[test]
fn bad_input_control_message_with_del_tab_and_high_bytes() {
    // isprint is 0x20..=0x7E: DEL, TAB, ESC and any byte >= 0x80 make the message go.
    let buf = b"PUSH_REQUEST\x7f\0\tEXIT\0\x1b[2J\0\x80\0EXIT\0";
    assert_eq!(
        control_messages(buf).collect::<Vec<_>>(),
        vec![
            Err(OptionsError::NonPrintable(12)),
            Err(OptionsError::NonPrintable(0)),
            Err(OptionsError::NonPrintable(0)),
            Err(OptionsError::NonPrintable(0)),
            Ok(ControlMessage::Exit),
        ]
    );
}

#[test]
fn bad_input_control_message_length_boundary() {
    // 2048 bytes including the NUL is the largest message the client reads (§8.1).
    let mut at_limit = vec![b'a'; CONTROL_MESSAGE_MAX - 1];
    at_limit.push(0);
    let s = "a".repeat(CONTROL_MESSAGE_MAX - 1);
    assert_eq!(
        control_messages(&at_limit).collect::<Vec<_>>(),
        vec![Ok(ControlMessage::Other(&s))]
    );
    let mut over = vec![b'a'; CONTROL_MESSAGE_MAX];
    over.push(0);
    assert_eq!(
        control_messages(&over).collect::<Vec<_>>(),
        vec![Err(OptionsError::TooLong(CONTROL_MESSAGE_MAX + 1))]
    );
    // Unterminated below the limit is Unterminated, at the limit TooLong.
    assert_eq!(
        control_messages(&at_limit[..CONTROL_MESSAGE_MAX - 1]).collect::<Vec<_>>(),
        vec![Err(OptionsError::Unterminated)]
    );
    assert_eq!(
        control_messages(&over[..CONTROL_MESSAGE_MAX]).collect::<Vec<_>>(),
        vec![Err(OptionsError::TooLong(CONTROL_MESSAGE_MAX))]
    );
}

#[test]
fn outgoing_control_messages() {
    assert_eq!(encode_control_message("EXIT").unwrap(), b"EXIT\0");
    assert_eq!(
        encode_control_message("AUTH\nFAILED"),
        Err(OptionsError::NonPrintable(4))
    );
    assert_eq!(
        encode_control_message("ü"),
        Err(OptionsError::NonPrintable(0))
    );
    assert!(encode_control_message(&"a".repeat(2047)).is_ok());
    assert_eq!(
        encode_control_message(&"a".repeat(2048)),
        Err(OptionsError::TooLong(2049))
    );
}

#[test]
fn auth_failed_messages() {
    // Run (c) observed the bare form.
    assert_eq!(auth_failed(None), "AUTH_FAILED");
    assert_eq!(auth_failed(Some("")), "AUTH_FAILED");
    assert_eq!(
        auth_failed(Some("certificate revoked")),
        "AUTH_FAILED,certificate revoked"
    );
    let m = auth_failed(Some("bad\0user\n\u{e9}"));
    assert_eq!(m, "AUTH_FAILED,bad?user???");
    assert!(encode_control_message(&m).is_ok());
    assert!(auth_failed(Some(&"x".repeat(5000))).len() < 300);
    assert_eq!(
        auth_failed_temp(IvProto(990), Some(30), "ldap down"),
        "AUTH_FAILED,TEMP[backoff 30]:ldap down"
    );
    assert_eq!(
        auth_failed_temp(IvProto(990), None, "ldap down"),
        "AUTH_FAILED,TEMP:ldap down"
    );
    assert_eq!(
        auth_failed_temp(IvProto(2), Some(30), "ldap down"),
        "AUTH_FAILED,ldap down"
    );
}

#[test]
fn options_string_mirrors_client() {
    assert_eq!(
        server_options_string(CAPTURE_CLIENT_OPTIONS_UDP, Transport::Udp),
        "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,\
         auth [null-digest],keysize 256,key-method 2,tls-server"
    );
    // Run (c)'s TCP client, and its logged "Expected Remote Options String".
    let tcp = "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_CLIENT,\
        cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
    assert_eq!(
        server_options_string(tcp, Transport::Tcp),
        "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_SERVER,\
         cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-server"
    );
    // Garbage from the client: fall back to the default, never echo it.
    for bad in ["", "V3,tls-client", "V4,\x07,tls-client", "V4,dev-type tun"] {
        let s = server_options_string(bad, Transport::Udp);
        assert!(s.starts_with("V4,dev-type tun,link-mtu 1549") && s.ends_with("tls-server"));
    }
    assert_eq!(
        options_string_item(CAPTURE_CLIENT_OPTIONS_UDP, "cipher"),
        Some("AES-256-GCM")
    );
    assert_eq!(
        options_string_item(CAPTURE_CLIENT_OPTIONS_UDP, "auth"),
        Some("[null-digest]")
    );
    assert_eq!(options_string_item("V4", "cipher"), None);
}

#[test]
fn auth_pending_carries_the_timeout_only_for_clients_that_take_it() {
    assert_eq!(
        auth_pending(IvProto(IvProto::AUTH_PENDING_KW), 120),
        "AUTH_PENDING,timeout 120"
    );
    assert_eq!(auth_pending(IvProto(IvProto::DATA_V2), 120), "AUTH_PENDING");
}

#[test]
fn the_web_login_form_follows_iv_sso() {
    let info = |s: &str| PeerInfo::parse(s);
    assert_eq!(
        web_auth_prefix(&info("IV_VER=2.6.14\nIV_SSO=openurl,webauth,crtext\n")),
        Some("WEB_AUTH::")
    );
    assert_eq!(
        web_auth_prefix(&info("IV_SSO=openurl\n")),
        Some("OPEN_URL:")
    );
    assert_eq!(web_auth_prefix(&info("IV_SSO=crtext\n")), None);
    assert_eq!(web_auth_prefix(&info("IV_VER=2.6.14\n")), None);
    // A value that only contains the word is not the method.
    assert_eq!(web_auth_prefix(&info("IV_SSO=nowebauth\n")), None);
}
