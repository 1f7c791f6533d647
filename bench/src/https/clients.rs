//! The load generators: a Rust TLS client for new handshakes, h2load for keep-alive
//! requests.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use xlb_tests::netns::{Netns, enter};

use super::servers::pin_thread;

/// Accepts every certificate and signature: a load generator's client must spend its
/// CPU on the handshake itself, not on checking the server.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Full handshakes per second against `port` over `secs` (after a one-second warm-up):
/// (handshakes, failures, seconds).
pub fn handshakes(
    ns: &Netns,
    cpu: usize,
    port: u16,
    secs: f64,
    tasks: usize,
) -> Result<(u64, u64, f64)> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<(u64, u64, f64)> {
        enter(&path)?;
        pin_thread(cpu);
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ok = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let counting = Arc::new(AtomicBool::new(false));
            let start = Instant::now();
            let warm = Duration::from_secs(1);
            let end = start + warm + Duration::from_secs_f64(secs);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..tasks {
                let (ok, failed, counting, connector) = (
                    ok.clone(),
                    failed.clone(),
                    counting.clone(),
                    connector.clone(),
                );
                set.spawn(async move {
                    let name = rustls::pki_types::ServerName::try_from("bench.example").unwrap();
                    while Instant::now() < end {
                        let r = async {
                            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                            let _ = tcp.set_nodelay(true);
                            let mut tls = connector.connect(name.clone(), tcp).await?;
                            // close_notify, then wait for the server to close first:
                            // TIME_WAIT stays on the server's side, and the client's
                            // port search does not grow with the run.
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            tls.get_mut().1.send_close_notify();
                            tls.flush().await?;
                            let mut buf = [0u8; 512];
                            // The handshake is done; how the server closes (with its own
                            // close_notify or without) does not matter.
                            while let Ok(n) = tls.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                            Ok::<_, std::io::Error>(())
                        }
                        .await;
                        if counting.load(Ordering::Relaxed) {
                            match r {
                                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }
                });
            }
            tokio::time::sleep(warm).await;
            counting.store(true, Ordering::Relaxed);
            let t0 = Instant::now();
            let before = ok.load(Ordering::Relaxed);
            tokio::time::sleep_until((end).into()).await;
            let n = ok.load(Ordering::Relaxed) - before;
            let took = t0.elapsed().as_secs_f64();
            while set.join_next().await.is_some() {}
            Ok((n, failed.load(Ordering::Relaxed), took))
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("handshake client panicked"))?
}

/// h2load over keep-alive connections: (requests per second, p99 ms, failed).
pub fn h2load(
    ns: &Netns,
    cpu: usize,
    port: u16,
    h2: bool,
    secs: u64,
    dir: &Path,
) -> Result<(f64, f64, u64)> {
    let log = dir.join(format!(
        "h2load-{port}-{}.log",
        if h2 { "h2" } else { "h1" }
    ));
    let cpu = cpu.to_string();
    let dur = secs.to_string();
    let url = format!("https://127.0.0.1:{port}/");
    let mut args = vec![
        "taskset",
        "-c",
        &cpu,
        "h2load",
        "-t",
        "1",
        "-D",
        &dur,
        "--warm-up-time",
        "1",
    ];
    if h2 {
        args.extend(["-c", "32", "-m", "8"]);
    } else {
        args.extend(["--h1", "-c", "32", "-m", "1"]);
    }
    let logs = log.to_string_lossy().to_string();
    args.extend(["--log-file", &logs, &url]);
    let out = ns.run(&args)?;
    let rps: f64 = out
        .lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("finished in ")?;
            l.split(',')
                .nth(1)?
                .trim()
                .strip_suffix(" req/s")?
                .parse()
                .ok()
        })
        .with_context(|| format!("h2load output: {out}"))?;
    let failed: u64 = out
        .lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("requests: ")?;
            l.split(',')
                .find_map(|p| p.trim().strip_suffix(" failed"))?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut lat: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    lat.sort_unstable();
    let p99 = if lat.is_empty() {
        f64::NAN
    } else {
        lat[(lat.len() * 99 / 100).min(lat.len() - 1)] as f64 / 1000.0
    };
    Ok((rps, p99, failed))
}
