//! nginx as the backends of the reference topology, for the benches that measure
//! against a real web server (the harness's own servers answer the tests).

use std::time::Duration;

use anyhow::{Context, Result};
use xlb_tests::{
    netns::{Spawned, fill, wait_until},
    topology::{Topology, backend_v4},
};

/// nginx as a backend on port 80, answering every request with its name: one process,
/// no master, so killing it stops the backend at once and leaves nothing behind.
const BACKEND_NGINX: &str = include_str!("../peers/backend-nginx.conf");

/// nginx on the backends of a `Topology`.
pub trait NginxBackends {
    /// nginx on port 80 of every backend (see `nginx_backend`).
    fn nginx_backends(&self) -> Result<Vec<Spawned>>;

    /// nginx on port 80 of backend `i`, answering "web<i+1>", once it answers; killed
    /// when the guard drops.
    fn nginx_backend(&self, i: usize) -> Result<Spawned>;
}

impl NginxBackends for Topology {
    fn nginx_backends(&self) -> Result<Vec<Spawned>> {
        (0..self.backends.len())
            .map(|i| self.nginx_backend(i))
            .collect()
    }

    fn nginx_backend(&self, i: usize) -> Result<Spawned> {
        let b = &self.backends[i];
        let name = format!("web{}", i + 1);
        let dir = self.dir.path.to_str().context("a UTF-8 directory")?;
        let conf = self.dir.path.join(format!("{name}.nginx.conf"));
        std::fs::write(&conf, fill(BACKEND_NGINX, &[("dir", dir), ("name", &name)]))?;
        let mut s = Spawned::start(
            b,
            &["nginx", "-c", conf.to_str().unwrap(), "-g", "daemon off;"],
            &self.dir.path.join(format!("{name}.log")),
        )?;
        let addr = backend_v4(i);
        wait_until(&format!("nginx on {name}"), Duration::from_secs(10), || {
            b.ok(&["curl", "-sf", "-o", "/dev/null", &format!("http://{addr}/")])
        })?;
        s.check_running(&name)?;
        Ok(s)
    }
}
