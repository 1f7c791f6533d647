//! The listener's certificates: the SNI resolver over a replaceable [`CertStore`] (loaded
//! by `config::tls_files`), and the file fingerprints that tell the listener when to
//! reload.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::config::tls_files::CertStore;

/// rustls' certificate resolver over a replaceable [`CertStore`]: a reload swaps the
/// store, handshakes in progress keep the certificate they picked.
pub struct SniResolver {
    store: RwLock<Arc<CertStore>>,
}

impl SniResolver {
    pub fn new(store: CertStore) -> Self {
        SniResolver {
            store: RwLock::new(Arc::new(store)),
        }
    }

    pub fn replace(&self, store: CertStore) {
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(store);
    }

    fn current(&self) -> Arc<CertStore> {
        self.store.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().pick(hello.server_name()))
    }
}

/// What the watcher compares: modification time, size and inode of each file.
pub type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}
