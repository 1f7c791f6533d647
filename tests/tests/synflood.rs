//! Kernel packet tests of SYN-flood protection: crafted TCP segments through
//! BPF_PROG_TEST_RUN (in a private namespace whose FIB the program uses, as in
//! balancer.rs), every branch asserted by the bytes that come out: the cookie SYN-ACK,
//! a proven ACK, forged, expired and flooding ACKs, `auto`'s threshold, the SYN
//! proxy's handshake with the backend and its translation both ways (nat and fullnat,
//! IPv4 and IPv6, with and without timestamps, window scales that differ), a backend's
//! refusal, a server that speaks first, dsr's reset cookie and allow-list, and an https
//! service's cookies for the local listener.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::{Reason, Verdict};
use xlb::{api::Request, model::services::Mode, model::synflood::SynMode};
use xlb_tests::{
    fixture::{BACKEND_MACS, CLIENT_MAC, Lb, XDP_DROP, XDP_PASS, XDP_TX, backend_index, setup},
    packet::assert_checksums,
    tcp::{ACK, FIN, Opts, PSH, RST, SYN, Seg},
};

struct Fam {
    vip: &'static str,
    vip_ip: &'static str,
    client: &'static str,
    backend_ips: [&'static str; 2],
    snat: &'static str,
    /// The kernel's cookie MSS for a client MSS of 1460, and what xlb announces.
    cookie_mss: u16,
    our_mss: u16,
}

const V4: Fam = Fam {
    vip: "198.51.100.10:80/tcp",
    vip_ip: "198.51.100.10",
    client: "192.0.2.2",
    backend_ips: ["203.0.113.11", "203.0.113.12"],
    snat: "203.0.113.1",
    cookie_mss: 1460,
    our_mss: 1460,
};

const V6: Fam = Fam {
    vip: "[2001:db8:f::10]:80/tcp",
    vip_ip: "2001:db8:f::10",
    client: "2001:db8:c::2",
    backend_ips: ["2001:db8:b::11", "2001:db8:b::12"],
    snat: "2001:db8:b::1",
    cookie_mss: 1440,
    our_mss: 1440,
};

fn service(lb: &mut Lb, f: &Fam, mode: Mode, syn: SynMode, threshold: Option<u32>) {
    match mode {
        Mode::Fullnat => lb.fullnat(f.vip, f.snat),
        m => lb.vip(f.vip, m, false),
    }
    let port = if mode == Mode::Dsr { 80 } else { 8080 };
    for b in f.backend_ips {
        let b = if b.contains(':') {
            format!("[{b}]:{port}")
        } else {
            format!("{b}:{port}")
        };
        lb.backend(f.vip, &b, 1);
    }
    lb.syn(f.vip, syn, threshold);
}

fn count(lb: &Lb, r: Reason, v: Verdict) -> u64 {
    lb.fx.counters().get(&(r, v)).map_or(0, |c| c.packets)
}

fn forward_entries(lb: &mut Lb) -> u64 {
    lb.fx.req(Request::Stats)["flows"]["forward"]
        .as_u64()
        .unwrap()
}

fn wscale(lb: &Lb) -> u8 {
    lb.fx.edge.dp.lb.syn.host.wscale
}

fn client_seg(lb: &Lb, f: &Fam, cport: u16, flags: u8) -> Seg {
    Seg::new(f.client, f.vip_ip, cport, 80, flags).macs(lb.mac, CLIENT_MAC)
}

fn run(lb: &Lb, s: &Seg) -> (u32, Seg, Vec<u8>) {
    let (action, out) = lb.run(&s.build());
    let seg = if action == XDP_TX || action == XDP_PASS {
        Seg::parse(&out)
    } else {
        s.clone()
    };
    (action, seg, out)
}

/// A client's SYN (Linux's options) answered with a cookie: the SYN-ACK's cookie and
/// timestamp.
fn syn_cookie(lb: &Lb, f: &Fam, cport: u16, isn: u32, tsval: u32, window: u16) -> (u32, u32) {
    let syn = client_seg(lb, f, cport, SYN)
        .seq(isn)
        .opts(Opts::linux_syn(tsval));
    let (action, sa, out) = run(lb, &syn);
    assert_eq!(action, XDP_TX, "a SYN is answered in XDP");
    assert_checksums(&out);
    assert_eq!(
        (sa.dst_mac, sa.src_mac),
        (CLIENT_MAC, lb.mac),
        "back to the client"
    );
    assert_eq!(sa.src.to_string(), f.vip_ip);
    assert_eq!(sa.dst.to_string(), f.client);
    assert_eq!((sa.sport, sa.dport), (80, cport));
    assert_eq!(sa.flags, SYN | ACK);
    assert_eq!(sa.ack, isn.wrapping_add(1));
    assert_eq!(sa.window, window);
    assert_eq!(sa.ttl, 64);
    assert!(sa.payload.is_empty());
    let o = &sa.opts;
    assert_eq!(o.mss, Some(f.our_mss), "xlb's MSS");
    assert!(o.sack_perm, "SACK kept");
    assert_eq!(o.ws, Some(wscale(lb)), "xlb's window scale");
    let (ours, echo) = o.ts.expect("a timestamp");
    assert_eq!(echo, tsval, "the client's timestamp echoed");
    assert_eq!(
        ours & 0xf,
        7,
        "the client's window scale in the cookie's timestamp"
    );
    assert_ne!(ours & 0x10, 0, "SACK in the cookie's timestamp");
    let idx = [536u16, 1300, 1440, 1460]
        .iter()
        .position(|m| *m == f.cookie_mss)
        .or_else(|| {
            [1220u16, 1420, 1440, 8940]
                .iter()
                .position(|m| *m == f.cookie_mss)
        })
        .unwrap() as u32;
    assert_eq!(
        (ours >> 6) & 3,
        idx,
        "the MSS's index in the cookie's timestamp"
    );
    (sa.seq, ours)
}

#[test]
fn cookies_the_proxy_handshake_and_translation_nat_ipv4_and_ipv6() {
    let mut lb = setup();
    for f in [V4, V6] {
        service(&mut lb, &f, Mode::Nat, SynMode::Always, None);
        let (isn, tsval, cport) = (1_000_000u32, 5000u32, 41000);
        let before = forward_entries(&mut lb);
        let (cookie, ours) = syn_cookie(&lb, &f, cport, isn, tsval, 0);
        assert_eq!(forward_entries(&mut lb), before, "no flow for a SYN");

        // The client's ACK proves the cookie: it becomes the SYN to a backend.
        let ack = client_seg(&lb, &f, cport, ACK)
            .seq(isn + 1)
            .ack(cookie.wrapping_add(1))
            .window(502)
            .opts(Opts::ts(tsval + 5, ours));
        let (action, s, out) = run(&lb, &ack);
        assert_eq!(action, XDP_TX, "{}: the SYN goes to a backend", f.vip);
        assert_checksums(&out);
        let i = backend_index(&out);
        assert_eq!(s.dst.to_string(), f.backend_ips[i]);
        assert_eq!(s.src.to_string(), f.client);
        assert_eq!((s.sport, s.dport), (cport, 8080));
        assert_eq!((s.flags, s.seq, s.ack), (SYN, isn, 0));
        assert_eq!(
            s.window,
            502 << 7,
            "the client's window, unscaled for a SYN"
        );
        assert_eq!(
            s.opts,
            Opts {
                mss: Some(f.cookie_mss),
                sack_perm: true,
                ts: Some((tsval + 5, 0)),
                ws: Some(7),
                sack: vec![],
            },
            "the client's options, from its cookie"
        );
        assert_eq!(
            forward_entries(&mut lb),
            before + 1,
            "one flow, once proven"
        );

        // The backend's SYN-ACK opens the client's window.
        let (bisn, bts) = (3_000_000_000u32, 777_000u32);
        let bsa = Seg::new(f.backend_ips[i], f.client, 8080, cport, SYN | ACK)
            .macs(lb.mac, BACKEND_MACS[i])
            .seq(bisn)
            .ack(isn + 1)
            .window(65160)
            .opts(Opts {
                mss: Some(1460),
                sack_perm: true,
                ts: Some((bts, tsval + 5)),
                ws: Some(wscale(&lb)),
                sack: vec![],
            });
        let (action, s, out) = run(&lb, &bsa);
        assert_eq!(action, XDP_TX, "{}: the window update to the client", f.vip);
        assert_checksums(&out);
        assert_eq!(s.dst_mac, CLIENT_MAC);
        assert_eq!(
            (s.src.to_string(), s.dst.to_string()),
            (f.vip_ip.into(), f.client.into())
        );
        assert_eq!((s.sport, s.dport), (80, cport));
        assert_eq!(s.flags, ACK);
        assert_eq!((s.seq, s.ack), (cookie.wrapping_add(1), isn + 1));
        assert_eq!(s.window, 65160 >> wscale(&lb));
        assert_eq!(s.opts, Opts::ts(ours, tsval + 5), "xlb's timestamp again");

        // The client's request: ACK number, timestamp echo and SACK blocks translated.
        let mut o = Opts::ts(tsval + 9, ours + 1);
        o.sack = vec![(cookie.wrapping_add(10), cookie.wrapping_add(20))];
        let req = client_seg(&lb, &f, cport, ACK | PSH)
            .seq(isn + 1)
            .ack(cookie.wrapping_add(1))
            .opts(o)
            .payload(b"GET / HTTP/1.1\r\n\r\n");
        let (action, s, out) = run(&lb, &req);
        assert_eq!(action, XDP_TX);
        assert_checksums(&out);
        assert_eq!(backend_index(&out), i, "the flow's backend");
        assert_eq!((s.seq, s.ack), (isn + 1, bisn.wrapping_add(1)));
        let mut want = Opts::ts(tsval + 9, bts + 1);
        want.sack = vec![(bisn.wrapping_add(10), bisn.wrapping_add(20))];
        assert_eq!(s.opts, want);
        assert_eq!(s.payload, b"GET / HTTP/1.1\r\n\r\n");

        // The backend's answer: sequence number and timestamp translated back.
        let resp = Seg::new(f.backend_ips[i], f.client, 8080, cport, ACK | PSH)
            .macs(lb.mac, BACKEND_MACS[i])
            .seq(bisn.wrapping_add(1))
            .ack(isn + 19)
            .window(500)
            .opts(Opts::ts(bts + 3, tsval + 9))
            .payload(b"HTTP/1.1 200 OK\r\n");
        let (action, s, out) = run(&lb, &resp);
        assert_eq!(action, XDP_TX);
        assert_checksums(&out);
        assert_eq!(s.src.to_string(), f.vip_ip);
        assert_eq!((s.seq, s.ack), (cookie.wrapping_add(1), isn + 19));
        assert_eq!(s.opts, Opts::ts(ours + 3, tsval + 9));
        assert_eq!(s.window, 500, "same window scale: untouched");
        assert_eq!(s.payload, b"HTTP/1.1 200 OK\r\n");

        // A FIN goes through translated like any segment.
        let fin = client_seg(&lb, &f, cport, FIN | ACK)
            .seq(isn + 19)
            .ack(cookie.wrapping_add(18))
            .opts(Opts::ts(tsval + 10, ours + 3));
        let (action, s, _) = run(&lb, &fin);
        assert_eq!(action, XDP_TX);
        assert_eq!(s.ack, bisn.wrapping_add(18));
        let v = lb
            .fx
            .edge
            .dp
            .lb
            .syn
            .view(
                lb.fx
                    .edge
                    .dp
                    .lb
                    .service_id(&f.vip.parse().unwrap())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            (v.stats.cookies_sent, v.stats.cookies_valid, v.stats.proxied),
            (1, 1, 1),
            "{}: counted",
            f.vip
        );
    }
    assert_eq!(count(&lb, Reason::SynCookie, Verdict::Tx), 2);
}

#[test]
fn forged_expired_and_flooding_acks_are_dropped_without_a_flow() {
    let mut lb = setup();
    for f in [V4, V6] {
        service(&mut lb, &f, Mode::Nat, SynMode::Always, None);
        let (cookie, ours) = syn_cookie(&lb, &f, 42000, 7, 100, 0);
        let before = forward_entries(&mut lb);
        let bad0 = count(&lb, Reason::SynCookieBad, Verdict::Drop);
        // Forged: another ACK number (not one off: a zero-window probe's sequence
        // number is one less, and the kernel's cookie grows with the client's ISN, so
        // the proxy takes (seq, ack) and (seq - 1, ack - 1) alike); another client port
        // (the cookie is the tuple's).
        let forged = client_seg(&lb, &f, 42000, ACK)
            .seq(8)
            .ack(cookie.wrapping_add(1000))
            .opts(Opts::ts(101, ours));
        assert_eq!(lb.run(&forged.build()).0, XDP_DROP, "forged");
        let other = client_seg(&lb, &f, 42001, ACK)
            .seq(8)
            .ack(cookie.wrapping_add(1))
            .opts(Opts::ts(101, ours));
        assert_eq!(lb.run(&other.build()).0, XDP_DROP, "another tuple's cookie");
        // Expired: the cookie's counter (its top 8 bits, in minutes) three back.
        let expired = client_seg(&lb, &f, 42000, ACK)
            .seq(8)
            .ack(cookie.wrapping_sub(3 << 24).wrapping_add(1))
            .opts(Opts::ts(101, ours));
        assert_eq!(lb.run(&expired.build()).0, XDP_DROP, "expired");
        // An ACK flood from spoofed sources: every one dropped in XDP.
        let n = 500u32;
        for k in 0..n {
            let src = if f.client.contains(':') {
                format!("2001:db8:c::{:x}", 0x100 + k)
            } else {
                format!("192.0.2.{}", 10 + k % 200)
            };
            let s = Seg::new(&src, f.vip_ip, 1024 + k as u16, 80, ACK)
                .macs(lb.mac, CLIENT_MAC)
                .seq(k * 7919)
                .ack(k.wrapping_mul(2_654_435_761));
            assert_eq!(lb.run(&s.build()).0, XDP_DROP);
        }
        // Stray handshake packets without a flow: dropped too.
        for flags in [RST, FIN | ACK, SYN | ACK] {
            let s = client_seg(&lb, &f, 42002, flags).seq(1).ack(1);
            assert_eq!(lb.run(&s.build()).0, XDP_DROP, "flags {flags:#x}");
        }
        assert_eq!(forward_entries(&mut lb), before, "{}: no flow made", f.vip);
        assert_eq!(
            count(&lb, Reason::SynCookieBad, Verdict::Drop) - bad0,
            3 + n as u64
        );
        // The real ACK still works.
        let ack = client_seg(&lb, &f, 42000, ACK)
            .seq(8)
            .ack(cookie.wrapping_add(1))
            .opts(Opts::ts(101, ours));
        assert_eq!(run(&lb, &ack).1.flags, SYN);
        assert_eq!(forward_entries(&mut lb), before + 1);
    }
    assert_eq!(count(&lb, Reason::SynNoFlow, Verdict::Drop), 6);
}

#[test]
fn auto_turns_on_above_its_threshold() {
    let mut lb = setup();
    service(&mut lb, &V4, Mode::Nat, SynMode::Auto, Some(2));
    // Two CPUs share a threshold of 2: one new flow each per second at most.
    let mut forwarded = 0;
    let mut cookies = 0;
    for k in 0..20u16 {
        let syn = client_seg(&lb, &V4, 43000 + k, SYN)
            .seq(k as u32)
            .opts(Opts::linux_syn(1));
        let (action, s, _) = run(&lb, &syn);
        assert_eq!(action, XDP_TX);
        if s.flags == SYN {
            forwarded += 1;
        } else {
            assert_eq!(s.flags, SYN | ACK);
            cookies += 1;
        }
    }
    assert!(forwarded <= 2, "{forwarded} SYNs reached a backend");
    assert_eq!(forwarded + cookies, 20);
    let id = lb
        .fx
        .edge
        .dp
        .lb
        .service_id(&V4.vip.parse().unwrap())
        .unwrap();
    let v = lb.fx.edge.dp.lb.syn.view(id).unwrap();
    assert!(v.state.until_ns > v.state.since_ns, "on, for a while");
    // Off: SYNs go to the backends again.
    lb.syn(V4.vip, SynMode::Off, None);
    let syn = client_seg(&lb, &V4, 43999, SYN)
        .seq(1)
        .opts(Opts::linux_syn(1));
    assert_eq!(run(&lb, &syn).1.flags, SYN);
}

#[test]
fn fullnat_proxy_handshake_and_translation() {
    let mut lb = setup();
    for f in [V4, V6] {
        service(&mut lb, &f, Mode::Fullnat, SynMode::Always, None);
        let (isn, tsval, cport) = (55u32, 9000u32, 44000);
        let (cookie, ours) = syn_cookie(&lb, &f, cport, isn, tsval, 0);
        let ack = client_seg(&lb, &f, cport, ACK)
            .seq(isn + 1)
            .ack(cookie.wrapping_add(1))
            .opts(Opts::ts(tsval + 1, ours));
        let (action, s, out) = run(&lb, &ack);
        assert_eq!(action, XDP_TX);
        assert_checksums(&out);
        let i = backend_index(&out);
        assert_eq!(s.src.to_string(), f.snat, "fullnat: xlb's source address");
        assert_eq!((s.flags, s.seq), (SYN, isn));
        let nat_port = s.sport;
        let bisn = 0xffff_fff0u32;
        let bsa = Seg::new(f.backend_ips[i], f.snat, 8080, nat_port, SYN | ACK)
            .macs(lb.mac, BACKEND_MACS[i])
            .seq(bisn)
            .ack(isn + 1)
            .opts(Opts {
                mss: Some(1400),
                sack_perm: true,
                ts: Some((42, tsval + 1)),
                ws: Some(wscale(&lb)),
                sack: vec![],
            });
        let (action, s, out) = run(&lb, &bsa);
        assert_eq!(action, XDP_TX);
        assert_checksums(&out);
        assert_eq!(
            (s.src.to_string(), s.dst.to_string()),
            (f.vip_ip.into(), f.client.into())
        );
        assert_eq!((s.sport, s.dport), (80, cport));
        assert_eq!(
            (s.flags, s.seq, s.ack),
            (ACK, cookie.wrapping_add(1), isn + 1)
        );
        let req = client_seg(&lb, &f, cport, ACK | PSH)
            .seq(isn + 1)
            .ack(cookie.wrapping_add(1))
            .opts(Opts::ts(tsval + 2, ours))
            .payload(b"ping");
        let (_, s, out) = run(&lb, &req);
        assert_checksums(&out);
        assert_eq!((s.sport, s.ack), (nat_port, bisn.wrapping_add(1)), "wraps");
        assert_eq!(s.opts.ts, Some((tsval + 2, 42)));
        let resp = Seg::new(f.backend_ips[i], f.snat, 8080, nat_port, ACK | PSH)
            .macs(lb.mac, BACKEND_MACS[i])
            .seq(bisn.wrapping_add(1))
            .ack(isn + 5)
            .opts(Opts::ts(50, tsval + 2))
            .payload(b"pong");
        let (_, s, out) = run(&lb, &resp);
        assert_checksums(&out);
        assert_eq!((s.dst.to_string(), s.dport), (f.client.into(), cport));
        assert_eq!(
            (s.seq, s.opts.ts),
            (cookie.wrapping_add(1), Some((ours + 8, tsval + 2)))
        );
    }
}

/// A client without timestamps: no window scale or SACK in its cookie, the MSS found
/// from the cookie; a backend whose window scale is not xlb's: windows rescaled.
#[test]
fn no_timestamps_and_window_scales_that_differ() {
    let mut lb = setup();
    service(&mut lb, &V4, Mode::Nat, SynMode::Always, None);
    let syn = client_seg(&lb, &V4, 45000, SYN).seq(10).opts(Opts {
        mss: Some(1300),
        ws: Some(8),
        sack_perm: true,
        ..Default::default()
    });
    let (action, sa, out) = run(&lb, &syn);
    assert_eq!(action, XDP_TX);
    assert_checksums(&out);
    assert_eq!(
        sa.opts,
        Opts {
            mss: Some(1460),
            ..Default::default()
        },
        "without timestamps a cookie keeps only the MSS"
    );
    let ack = client_seg(&lb, &V4, 45000, ACK)
        .seq(11)
        .ack(sa.seq.wrapping_add(1))
        .window(4000);
    let (action, s, out) = run(&lb, &ack);
    assert_eq!(action, XDP_TX);
    assert_checksums(&out);
    let i = backend_index(&out);
    assert_eq!(
        (s.flags, s.window, &s.opts),
        (
            SYN,
            4000,
            &Opts {
                mss: Some(1300),
                ..Default::default()
            }
        ),
        "the client's MSS, found from its cookie"
    );
    let bsa = Seg::new(V4.backend_ips[i], V4.client, 8080, 45000, SYN | ACK)
        .macs(lb.mac, BACKEND_MACS[i])
        .seq(77)
        .ack(11)
        .window(29200)
        .opts(Opts {
            mss: Some(1460),
            ..Default::default()
        });
    let (_, s, out) = run(&lb, &bsa);
    assert_checksums(&out);
    assert_eq!((s.flags, s.window, &s.opts), (ACK, 29200, &Opts::default()));

    // With timestamps, a backend scaling by 2 where xlb announced its own scale.
    let (cookie, ours) = syn_cookie(&lb, &V4, 45001, 20, 300, 0);
    let ack = client_seg(&lb, &V4, 45001, ACK)
        .seq(21)
        .ack(cookie.wrapping_add(1))
        .opts(Opts::ts(301, ours));
    let (_, s, out) = run(&lb, &ack);
    let i = backend_index(&out);
    assert_eq!(s.flags, SYN);
    let ws = wscale(&lb);
    let bsa = Seg::new(V4.backend_ips[i], V4.client, 8080, 45001, SYN | ACK)
        .macs(lb.mac, BACKEND_MACS[i])
        .seq(1000)
        .ack(21)
        .window(65535)
        .opts(Opts {
            ts: Some((5, 301)),
            ws: Some(2),
            ..Default::default()
        });
    let (_, s, _) = run(&lb, &bsa);
    assert_eq!(s.window, 65535 >> ws);
    let data = Seg::new(V4.backend_ips[i], V4.client, 8080, 45001, ACK)
        .macs(lb.mac, BACKEND_MACS[i])
        .seq(1001)
        .ack(21)
        .window(1 << 14)
        .opts(Opts::ts(6, 301));
    let (_, s, out) = run(&lb, &data);
    assert_checksums(&out);
    let want = ((1u32 << 14) << 2) >> ws;
    assert_eq!(
        s.window as u32,
        want.clamp(1, 65535),
        "rescaled to xlb's scale"
    );
}

/// A backend that refuses: its reset reaches the client in the client's numbers. A
/// server that speaks first: its SYN-ACK again, answered by xlb with the ACK. Before the
/// backend answers, the client's ACK sends the SYN again, its data is dropped.
#[test]
fn backend_refusal_retransmissions_and_servers_that_speak_first() {
    let mut lb = setup();
    service(&mut lb, &V4, Mode::Nat, SynMode::Always, None);
    let (cookie, ours) = syn_cookie(&lb, &V4, 46000, 100, 10, 0);
    let ack = client_seg(&lb, &V4, 46000, ACK)
        .seq(101)
        .ack(cookie.wrapping_add(1))
        .opts(Opts::ts(11, ours));
    let (_, s, out) = run(&lb, &ack);
    let i = backend_index(&out);
    assert_eq!(s.flags, SYN);
    // Again (the client's window probe, or its ACK resent): the SYN again.
    let probe = client_seg(&lb, &V4, 46000, ACK)
        .seq(100)
        .ack(cookie.wrapping_add(1))
        .opts(Opts::ts(12, ours));
    let (action, s, _) = run(&lb, &probe);
    assert_eq!((action, s.flags, s.seq), (XDP_TX, SYN, 100));
    let data = client_seg(&lb, &V4, 46000, ACK | PSH)
        .seq(101)
        .ack(cookie.wrapping_add(1))
        .payload(b"early");
    assert_eq!(
        lb.run(&data.build()).0,
        XDP_DROP,
        "no data before the backend answers"
    );
    let rst = Seg::new(V4.backend_ips[i], V4.client, 8080, 46000, RST | ACK)
        .macs(lb.mac, BACKEND_MACS[i])
        .seq(0)
        .ack(101);
    let (action, s, out) = run(&lb, &rst);
    assert_eq!(action, XDP_TX);
    assert_checksums(&out);
    assert_eq!(
        (s.flags, s.seq, s.ack),
        (RST | ACK, cookie.wrapping_add(1), 101)
    );

    // Another connection, whose backend speaks first.
    let (cookie, ours) = syn_cookie(&lb, &V4, 46001, 200, 20, 0);
    let ack = client_seg(&lb, &V4, 46001, ACK)
        .seq(201)
        .ack(cookie.wrapping_add(1))
        .opts(Opts::ts(21, ours));
    let (_, _, out) = run(&lb, &ack);
    let i = backend_index(&out);
    let bsa = Seg::new(V4.backend_ips[i], V4.client, 8080, 46001, SYN | ACK)
        .macs(lb.mac, BACKEND_MACS[i])
        .seq(5000)
        .ack(201)
        .opts(Opts {
            ts: Some((900, 21)),
            ws: Some(wscale(&lb)),
            ..Default::default()
        });
    assert_eq!(run(&lb, &bsa).1.flags, ACK, "the window update");
    let (action, s, out) = run(
        &lb,
        &bsa.clone().opts(Opts {
            ts: Some((1900, 21)),
            ws: Some(wscale(&lb)),
            ..Default::default()
        }),
    );
    assert_eq!(action, XDP_TX, "the SYN-ACK again: xlb answers it");
    assert_checksums(&out);
    assert_eq!(
        (s.dst_mac, s.src_mac),
        (BACKEND_MACS[i], lb.mac),
        "back to the backend"
    );
    assert_eq!(
        (s.src.to_string(), s.dst.to_string()),
        (V4.client.into(), V4.backend_ips[i].into())
    );
    assert_eq!((s.sport, s.dport), (46001, 8080));
    assert_eq!((s.flags, s.seq, s.ack), (ACK, 201, 5001));
    assert_eq!(s.opts.ts, Some((21, 1900)));
    assert_eq!(count(&lb, Reason::SynProxy, Verdict::Tx), 1);
}

/// dsr: the SYN-ACK carries a cookie as its ACK number; the client's stack refuses it
/// with a reset that carries it back, which allow-lists the source; its next SYN goes to
/// the backend (only the MACs change, as for any dsr flow).
#[test]
fn dsr_reset_cookies_allow_list_the_source() {
    let mut lb = setup();
    for f in [V4, V6] {
        service(&mut lb, &f, Mode::Dsr, SynMode::Always, None);
        let before = forward_entries(&mut lb);
        let syn = client_seg(&lb, &f, 47000, SYN)
            .seq(1234)
            .opts(Opts::linux_syn(5));
        let (action, sa, out) = run(&lb, &syn);
        assert_eq!(action, XDP_TX);
        assert_checksums(&out);
        assert_eq!(sa.flags, SYN | ACK);
        assert_ne!(sa.ack, 1235, "an ACK number the client refuses");
        assert_eq!((sa.window, &sa.opts), (0, &Opts::default()));
        assert_eq!(forward_entries(&mut lb), before, "no flow for a SYN");
        // A reset with another number: refused (not one a few off: the kernel's cookie
        // keeps its MSS index in the low bits, so cookie + 1..3 check as the same
        // handshake with another MSS, for the kernel's own cookies too).
        let bad = client_seg(&lb, &f, 47000, RST).seq(sa.ack.wrapping_add(1000));
        assert_eq!(lb.run(&bad.build()).0, XDP_DROP);
        let ack = client_seg(&lb, &f, 47000, ACK)
            .seq(1235)
            .ack(sa.seq.wrapping_add(1));
        assert_eq!(
            lb.run(&ack.build()).0,
            XDP_DROP,
            "no ACK proves a dsr cookie"
        );
        let syn2 = client_seg(&lb, &f, 47000, SYN)
            .seq(1234)
            .opts(Opts::linux_syn(6));
        assert_eq!(run(&lb, &syn2).1.flags, SYN | ACK, "not allow-listed yet");
        // The client's reset: RFC 793's answer to an unacceptable ACK.
        let rst = client_seg(&lb, &f, 47000, RST).seq(sa.ack);
        let ok0 = count(&lb, Reason::SynCookieOk, Verdict::Drop);
        assert_eq!(lb.run(&rst.build()).0, XDP_DROP);
        assert_eq!(count(&lb, Reason::SynCookieOk, Verdict::Drop), ok0 + 1);
        // Its SYN again, and one of another connection: to the backend.
        for port in [47000, 47001] {
            let s = client_seg(&lb, &f, port, SYN)
                .seq(1234)
                .opts(Opts::linux_syn(7))
                .build();
            let (action, out) = lb.run(&s);
            assert_eq!(action, XDP_TX);
            backend_index(&out);
            assert_eq!(out[12..], s[12..], "dsr: only the MACs change");
        }
        lb.fx.req(Request::VipDel { vip: f.vip.into() });
    }
}

/// An https service (the local listener): a SYN now and then goes to the kernel, the
/// rest get cookies it takes (window open, options as the kernel encodes them); a
/// proven ACK passes, a forged one (and other packets of no connection) are dropped;
/// nothing else is touched.
#[test]
fn https_cookies_are_for_the_local_listener() {
    let mut lb = setup();
    let addr: SocketAddr = "192.0.2.1:8443".parse().unwrap();
    let _listener = std::net::TcpListener::bind(addr).unwrap();
    let mut https = BTreeMap::new();
    https.insert(
        addr,
        xlb::model::synflood::SynProtection {
            mode: SynMode::Always,
            threshold: 100,
        },
    );
    lb.fx.edge.dp.lb.syn.set_local(&https).unwrap();
    lb.fx.edge.dp.set_config(&lb.fx.edge.rules).unwrap();
    let host = lb.fx.edge.dp.lb.syn.host;
    assert_eq!(
        (host.syncookies, host.timestamps),
        (2, 2),
        "set for the listener"
    );
    let seg =
        |flags| Seg::new("192.0.2.2", "192.0.2.1", 48000, 8443, flags).macs(lb.mac, CLIENT_MAC);
    let syn = seg(SYN).seq(99).opts(Opts::linux_syn(3));
    assert_eq!(
        lb.run(&syn.build()).0,
        XDP_PASS,
        "the first goes to the kernel"
    );
    let (action, sa, out) = run(&lb, &syn);
    assert_eq!(action, XDP_TX);
    assert_checksums(&out);
    assert_eq!((sa.flags, sa.ack, sa.window), (SYN | ACK, 100, 64240));
    assert_eq!(sa.opts.ws, Some(host.wscale));
    let ours = sa.opts.ts.unwrap().0;
    assert_eq!(
        ours & 0x1f,
        0x17,
        "the kernel's encoding: window scale 7, SACK"
    );
    let ack = seg(ACK)
        .seq(100)
        .ack(sa.seq.wrapping_add(1))
        .opts(Opts::ts(4, ours));
    assert_eq!(
        lb.run(&ack.build()).0,
        XDP_PASS,
        "the proven ACK to the listener"
    );
    let forged = seg(ACK)
        .seq(100)
        .ack(sa.seq.wrapping_add(9))
        .opts(Opts::ts(4, ours));
    assert_eq!(lb.run(&forged.build()).0, XDP_DROP);
    let stray = seg(FIN | ACK).seq(100).ack(1);
    assert_eq!(lb.run(&stray.build()).0, XDP_DROP);
    // Another port of the address, and UDP: not the service's.
    let other = Seg::new("192.0.2.2", "192.0.2.1", 48000, 8444, ACK).macs(lb.mac, CLIENT_MAC);
    assert_eq!(lb.run(&other.build()).0, XDP_PASS);
    assert_eq!(count(&lb, Reason::SynCookieOk, Verdict::Pass), 1);
    assert_eq!(count(&lb, Reason::SynCookieBad, Verdict::Drop), 1);
    assert_eq!(count(&lb, Reason::SynNoFlow, Verdict::Drop), 1);
    // Off: everything passes.
    https.clear();
    lb.fx.edge.dp.lb.syn.set_local(&https).unwrap();
    assert_eq!(lb.run(&forged.build()).0, XDP_PASS);
}

/// Health checks are not starved: while protection is on, a backend's answers to the
/// daemon's probes (to this host's address and an ephemeral port) pass untouched, and
/// nothing is counted against the service.
#[test]
fn health_check_answers_pass_while_protection_is_on() {
    let mut lb = setup();
    for f in [V4, V6] {
        service(&mut lb, &f, Mode::Nat, SynMode::Always, None);
        for flags in [SYN | ACK, ACK | PSH, RST | ACK, FIN | ACK] {
            let s = Seg::new(f.backend_ips[0], f.snat, 8080, 51000, flags)
                .macs(lb.mac, BACKEND_MACS[0])
                .seq(1)
                .ack(2)
                .payload(if flags & PSH != 0 {
                    b"HTTP/1.1 200 OK\r\n"
                } else {
                    b""
                })
                .build();
            let (action, out) = lb.run(&s);
            assert_eq!(
                action, XDP_PASS,
                "{}: a probe's answer ({flags:#x}) passes",
                f.vip
            );
            assert_eq!(out, s, "untouched");
        }
        let id = lb
            .fx
            .edge
            .dp
            .lb
            .service_id(&f.vip.parse().unwrap())
            .unwrap();
        let v = lb.fx.edge.dp.lb.syn.view(id).unwrap();
        assert_eq!(
            (v.stats.cookies_refused, v.stats.no_flow),
            (0, 0),
            "nothing counted"
        );
    }
    assert_eq!(count(&lb, Reason::SynCookieBad, Verdict::Drop), 0);
    assert_eq!(count(&lb, Reason::SynNoFlow, Verdict::Drop), 0);
}
