//! One probe of a backend: a TCP connect, an HTTP or HTTPS GET answered with the
//! expected status, or a TLS handshake, bounded by the check's timeout.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::Target;
use crate::model::health_check::{CheckKind, HealthCheck};

/// One check of `t`, within its timeout.
pub async fn probe<K>(t: &Target<K>, tls: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    let timeout = t.check.timeout;
    match tokio::time::timeout(timeout, probe_unbounded(t, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", ms(timeout))),
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

async fn probe_unbounded<K>(
    t: &Target<K>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let addr = t.addr().ok_or("no port to check (give the check a port)")?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    match t.check.kind {
        CheckKind::Tcp => Ok("connected".into()),
        CheckKind::Http => http_get(tcp, addr, &t.check).await,
        CheckKind::Https => http_get(handshake(tcp, addr, tls).await?, addr, &t.check).await,
        CheckKind::Tls => handshake(tcp, addr, tls)
            .await
            .map(|_| "TLS handshake done".into()),
    }
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))
}

/// `GET path` with `Connection: close`; Ok if the status is the expected one.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    check: &HealthCheck,
) -> Result<String, String> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xlb-health-check\r\nConnection: close\r\n\r\n",
        check.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: '{}'", line.escape_debug()))?;
    if status == check.expect_status {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}, expected {}", check.expect_status))
    }
}

/// Accepts any certificate, but checks the handshake's signatures (health checks, and
/// the tests that look at what a server presents).
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(super) fn tls_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}
