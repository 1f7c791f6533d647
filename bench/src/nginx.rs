//! nginx as the backends of the reference topology, for the benches that measure
//! against a real web server (the harness's own servers answer the tests).

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use xlb_tests::{
    netns::{Netns, Spawned, fill, wait_until},
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
        let addr = backend_v4(i);
        nginx_in(
            &self.backends[i],
            &self.dir.path,
            &format!("web{}", i + 1),
            &format!("http://{addr}/"),
        )
    }
}

/// nginx on port 80 of `ns` (every address), answering `name`, its files in `dir`,
/// once `url` answers from `ns`; killed when the guard drops.
pub fn nginx_in(ns: &Netns, dir: &Path, name: &str, url: &str) -> Result<Spawned> {
    let d = dir.to_str().context("a UTF-8 directory")?;
    let conf = dir.join(format!("{name}.nginx.conf"));
    std::fs::write(&conf, fill(BACKEND_NGINX, &[("dir", d), ("name", name)]))?;
    let mut s = Spawned::start(
        ns,
        &["nginx", "-c", conf.to_str().unwrap(), "-g", "daemon off;"],
        &dir.join(format!("{name}.log")),
    )?;
    wait_until(&format!("nginx on {name}"), Duration::from_secs(10), || {
        ns.ok(&["curl", "-sf", "-o", "/dev/null", url])
    })?;
    s.check_running(name)?;
    Ok(s)
}
