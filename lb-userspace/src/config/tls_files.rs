//! The TLS files an https configuration names, loaded and checked: PEM chains and keys,
//! the server certificates chosen by SNI name ([`CertStore`]), the CA and client
//! certificate of a pool that re-encrypts to its backends.
//!
//! A set of certificates is loaded whole and checked (readable, PEM, the key matches
//! the leaf, the leaf is valid now and holds every SNI name it is configured for)
//! before it replaces the set in use; a failed load leaves the old set serving. The
//! configuration's validation loads them the same way (`xlb check-config`, reloads).

use std::{collections::HashMap, path::Path, sync::Arc, time::SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    sign::CertifiedKey,
};

use super::{
    files::read_bytes,
    https::{CertFiles, HttpsConfig, PoolConfig},
};

/// Reads a PEM certificate chain (leaf first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_bytes(path).context("reading a certificate chain")?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if chain.is_empty() {
        bail!("{}: no CERTIFICATE block in it", path.display());
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read_bytes(path).context("reading a private key")?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| anyhow!("{}: no usable PEM private key in it: {e}", path.display()))
}

/// What the leaf certificate says about itself.
struct Leaf {
    not_before: i64,
    not_after: i64,
    dns_names: Vec<String>,
}

fn leaf_info(der: &CertificateDer<'_>, path: &Path) -> Result<Leaf> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
        anyhow!(
            "{}: the first certificate does not parse: {e}",
            path.display()
        )
    })?;
    let validity = cert.validity();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(Leaf {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        dns_names,
    })
}

/// Whether a certificate name (maybe `*.x`) covers a configured name (maybe `*.x`).
fn covers(cert_name: &str, name: &str) -> bool {
    if cert_name == name {
        return true;
    }
    match (cert_name.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => label != "*" && rest == suffix,
        _ => false,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn date(t: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// Loads a chain and key and checks them: the key matches the leaf, the leaf is valid
/// now and holds every name in `names`.
pub fn load_pair(
    files: &CertFiles,
    names: &[String],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>> {
    let chain = read_chain(&files.chain)?;
    let key = read_key(&files.key)?;
    let leaf = leaf_info(&chain[0], &files.chain)?;
    let now = unix_now();
    if now > leaf.not_after {
        bail!(
            "{}: the certificate expired on {}",
            files.chain.display(),
            date(leaf.not_after)
        );
    }
    if now < leaf.not_before {
        bail!(
            "{}: the certificate is not valid before {}",
            files.chain.display(),
            date(leaf.not_before)
        );
    }
    for n in names {
        if !leaf.dns_names.iter().any(|c| covers(c, n)) {
            bail!(
                "{}: the certificate does not hold the name {n} (it holds {:?})",
                files.chain.display(),
                leaf.dns_names
            );
        }
    }
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow!(
            "the key in {} does not match the certificate in {}",
            files.key.display(),
            files.chain.display()
        ),
        other => anyhow!("{}: unusable key: {other}", files.key.display()),
    })?;
    Ok(Arc::new(ck))
}

/// One complete, checked set of server certificates.
pub struct CertStore {
    pub(crate) default: Arc<CertifiedKey>,
    pub(crate) exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.a.example` stored as `a.example`.
    pub(crate) wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn load(cfg: &HttpsConfig, provider: &CryptoProvider) -> Result<Self> {
        let default = load_pair(&cfg.default_cert, &[], provider).context("default_cert")?;
        let mut store = CertStore {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for c in &cfg.certs {
            let ck = load_pair(&c.files(), &c.names, provider)
                .with_context(|| format!("certificate for {}", c.names.join(", ")))?;
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => store.wildcard.insert(suffix.to_string(), ck.clone()),
                    None => store.exact.insert(n.clone(), ck.clone()),
                };
            }
        }
        Ok(store)
    }

    /// The certificate for an SNI name (exact, then one-label wildcard, then default).
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        if let Some((_, rest)) = name.split_once('.')
            && let Some(c) = self.wildcard.get(rest)
        {
            return c.clone();
        }
        self.default.clone()
    }
}

/// The client side of a pool's re-encryption to its backends: its CA (the backends'
/// certificates must chain to it), its client certificate if any, and the name the
/// backends' certificates must hold.
pub fn upstream_client(
    cfg: &PoolConfig,
    provider: Arc<CryptoProvider>,
) -> Result<(rustls::ClientConfig, ServerName<'static>)> {
    let ca = cfg.ca.as_ref().context("upstream_tls needs ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in read_chain(ca)? {
        roots
            .add(c)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match &cfg.client_cert {
        Some(files) => {
            let ck = load_pair(files, &[], &provider).context("client_cert")?;
            builder
                .with_client_auth_cert(ck.cert.clone(), read_key(&files.key)?)
                .context("client_cert")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = cfg
        .server_name
        .clone()
        .context("upstream_tls needs server_name")?;
    let server_name =
        ServerName::try_from(name.clone()).with_context(|| format!("server_name '{name}'"))?;
    Ok((config, server_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn provider() -> CryptoProvider {
        rustls::crypto::aws_lc_rs::default_provider()
    }

    struct Files {
        dir: PathBuf,
    }
    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn files(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("xlb-certs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write_cert(
        dir: &Path,
        stem: &str,
        names: &[&str],
        window: Option<(i32, i32)>,
    ) -> (CertFiles, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, to)) = window {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let cert = params.self_signed(&key).unwrap();
        let f = CertFiles {
            chain: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&f.chain, cert.pem()).unwrap();
        std::fs::write(&f.key, key.serialize_pem()).unwrap();
        (f, key)
    }

    fn err(r: Result<Arc<CertifiedKey>>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn good_pair_loads_and_bad_ones_say_why() {
        let d = files("pairs");
        let p = provider();
        let (a, _) = write_cert(&d.dir, "a", &["a.example", "*.w.example"], None);
        load_pair(&a, &["a.example".into(), "x.w.example".into()], &p).unwrap();
        load_pair(&a, &["*.w.example".into()], &p).unwrap();
        assert!(err(load_pair(&a, &["b.example".into()], &p)).contains("does not hold the name"));

        let (b, _) = write_cert(&d.dir, "b", &["b.example"], None);
        let mismatched = CertFiles {
            chain: a.chain.clone(),
            key: b.key.clone(),
        };
        assert!(err(load_pair(&mismatched, &[], &p)).contains("does not match"));

        let missing = CertFiles {
            chain: d.dir.join("nope.pem"),
            key: a.key.clone(),
        };
        let e = err(load_pair(&missing, &[], &p));
        assert!(e.contains("nope.pem") && e.contains("No such file"), "{e}");

        let (old, _) = write_cert(&d.dir, "old", &["a.example"], Some((2000, 2001)));
        assert!(err(load_pair(&old, &[], &p)).contains("expired on"));
        let (future, _) = write_cert(&d.dir, "future", &["a.example"], Some((2999, 3000)));
        assert!(err(load_pair(&future, &[], &p)).contains("not valid before"));

        std::fs::write(&b.chain, "garbage").unwrap();
        assert!(err(load_pair(&b, &[], &p)).contains("no CERTIFICATE"));
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let d = files("sni");
        let p = provider();
        let (def, _) = write_cert(&d.dir, "def", &["default.example"], None);
        let (a, _) = write_cert(&d.dir, "a", &["a.example"], None);
        let (w, _) = write_cert(&d.dir, "w", &["*.w.example"], None);
        let cfg = HttpsConfig {
            default_cert: def,
            certs: vec![
                super::super::https::NamedCert {
                    names: vec!["a.example".into()],
                    chain: a.chain,
                    key: a.key,
                },
                super::super::https::NamedCert {
                    names: vec!["*.w.example".into()],
                    chain: w.chain,
                    key: w.key,
                },
            ],
            ..HttpsConfig::from_toml(
                "listen = [\"127.0.0.1:1\"]\ndefault_cert = { chain = \"x\", key = \"y\" }\nroutes = []\npools = []",
            )
            .unwrap()
        };
        let s = CertStore::load(&cfg, &p).unwrap();
        let leaf = |sni: Option<&str>| s.pick(sni).cert[0].clone();
        assert_eq!(leaf(Some("A.Example.")), s.exact["a.example"].cert[0]);
        assert_eq!(leaf(Some("x.w.example")), s.wildcard["w.example"].cert[0]);
        assert_eq!(leaf(Some("x.y.w.example")), s.default.cert[0]);
        assert_eq!(leaf(Some("w.example")), s.default.cert[0]);
        assert_eq!(leaf(None), s.default.cert[0]);
    }
}
