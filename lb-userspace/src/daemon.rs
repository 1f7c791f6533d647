//! `xlb run`: owns the datapath and the desired state, serves the control socket.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::net::IpAddr;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    control::{Request, Response},
    datapath::{AttachMode, Datapath, check_bpffs},
    rules::{self, Action, Change, Match, PortSpec, Prefix, RuleSet, Target},
    services::{BackendAddr, ServiceError, Services, Vip},
    state,
};

pub struct RunOptions {
    pub iface: String,
    pub mode: AttachMode,
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Monitoring: `/metrics`, drop events, kernel log (see `monitor`).
    pub monitor: crate::monitor::MonitorOptions,
}

/// The edge's desired state (firewall rules and services) and its projection on the
/// kernel maps, changed as one.
pub struct Edge {
    pub dp: Datapath,
    pub rules: RuleSet,
    pub services: Services,
    /// The interface xlb runs on (None in tests): services need forwarding on it.
    pub iface: Option<String>,
    /// Where the desired state is stored; `None` keeps it in memory (tests, bench).
    pub state_path: Option<PathBuf>,
}

fn parse_all<T>(
    targets: &[String],
    f: impl Fn(&str) -> Result<T, rules::RuleError>,
) -> Result<Vec<T>> {
    if targets.is_empty() {
        bail!("nothing given: name at least one prefix or port");
    }
    targets
        .iter()
        .map(|t| f(t).map_err(|e| anyhow!(e)))
        .collect()
}

fn prefix_only(s: &str) -> Result<Prefix, rules::RuleError> {
    if s.ends_with("/tcp") || s.ends_with("/udp") {
        return Err(rules::RuleError::BadPrefix {
            input: s.into(),
            why: "this is a port spec: use `xlb fw port allow|deny`".into(),
        });
    }
    s.parse()
}

impl Edge {
    pub fn new(dp: Datapath, stored: state::Stored, state_path: Option<PathBuf>) -> Result<Self> {
        let mut edge = Edge {
            dp,
            rules: stored.rules,
            services: stored.services,
            iface: None,
            state_path,
        };
        edge.dp.load_rules(&edge.rules)?;
        edge.dp.lb.sync(&edge.services)?;
        edge.dp.set_config(&edge.rules)?;
        Ok(edge)
    }

    pub fn handle(&mut self, req: Request) -> Response {
        match self.try_handle(req) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    fn try_handle(&mut self, req: Request) -> Result<Value> {
        match req {
            Request::Prefix { action, targets } => {
                let ps = parse_all(&targets, prefix_only)?;
                self.change(|r| {
                    ps.iter()
                        .map(|p| r.upsert(Match::Prefix(*p), action))
                        .collect()
                })
            }
            Request::Port { action, targets } => {
                let ps = parse_all(&targets, |s| s.parse::<PortSpec>())?;
                self.change(|r| {
                    ps.iter()
                        .map(|p| r.upsert(Match::Port(*p), action))
                        .collect()
                })
            }
            Request::Except { targets } => {
                let ts = parse_all(&targets, rules::parse_target)?;
                self.change(|r| {
                    ts.iter()
                        .map(|t| match t {
                            Target::Prefix(p) => r.upsert(Match::ExceptPrefix(*p), Action::Allow),
                            Target::Port(p) => r.upsert(Match::ExceptPort(*p), Action::Allow),
                        })
                        .collect()
                })
            }
            Request::Del { except, targets } => {
                let ms: Vec<Match> = parse_all(&targets, rules::parse_target)?
                    .into_iter()
                    .map(|t| match (t, except) {
                        (Target::Prefix(p), false) => Match::Prefix(p),
                        (Target::Port(p), false) => Match::Port(p),
                        (Target::Prefix(p), true) => Match::ExceptPrefix(p),
                        (Target::Port(p), true) => Match::ExceptPort(p),
                    })
                    .collect();
                // All or nothing: check every target before removing any.
                for m in &ms {
                    if self.rules.get(m).is_none() {
                        bail!("{} {m} is not in the rule set", m.kind());
                    }
                }
                self.change(|r| ms.iter().map(|m| r.remove(m).map(Some)).collect())
            }
            Request::Default { action } => self.policy(|r| &mut r.default_policy, action),
            Request::Malformed { action } => self.policy(|r| &mut r.malformed_policy, action),
            Request::Load { action, text } => {
                let entries = rules::parse_bulk(&text, action)
                    .map_err(|(line, e)| anyhow!("line {line}: {e}; nothing was loaded"))?;
                self.rules.reserve(entries.len());
                self.change(|r| {
                    entries
                        .iter()
                        .map(|(p, a)| r.upsert(Match::Prefix(*p), *a))
                        .collect()
                })
            }
            Request::Flush => {
                let all: Vec<Match> = self.rules.rules().map(|r| r.matches).collect();
                self.change(|r| all.iter().map(|m| r.remove(m).map(Some)).collect())
            }
            Request::VipAdd {
                vip,
                mode,
                affinity_source,
                echo,
                tcp_idle,
                udp_idle,
                snat,
            } => {
                let vip: Vip = vip.parse()?;
                let snat: Option<IpAddr> = match snat {
                    Some(a) => Some(a.parse().map_err(|_| {
                        anyhow!(
                            "'{a}' is not an address (expected e.g. 203.0.113.1 or 2001:db8::1)"
                        )
                    })?),
                    None => None,
                };
                self.check_forwarding(&vip)?;
                // In tests (no interface) the program runs on crafted frames only.
                let must_be_local = self.iface.is_some();
                self.services_change(|s| {
                    s.add_service(vip, mode, affinity_source, echo)?;
                    s.set_snat(&vip, snat)?;
                    if let (Some(a), true) = (snat, must_be_local) {
                        ensure_local(a)?;
                    }
                    s.set_idle(&vip, tcp_idle, udp_idle)
                })
            }
            Request::VipDel { vip } => {
                let vip: Vip = vip.parse()?;
                self.services_change(|s| s.del_service(&vip).map(|_| ()))
            }
            Request::BackendAdd {
                vip,
                backend,
                weight,
            } => {
                let (vip, b): (Vip, BackendAddr) = (vip.parse()?, backend.parse()?);
                self.services_change(|s| s.add_backend(&vip, b, weight).map(|_| ()))
            }
            Request::BackendDel { vip, backend } => {
                let (vip, b): (Vip, BackendAddr) = (vip.parse()?, backend.parse()?);
                self.services_change(|s| s.del_backend(&vip, b))
            }
            Request::VipList => Ok(self.vip_list()),
            Request::List => self.list(),
            Request::Stats => self.stats(),
        }
    }

    /// Applies a rule-set edit to the set, the maps and the state file, or to none of them.
    fn change(
        &mut self,
        edit: impl FnOnce(&mut RuleSet) -> Vec<Result<Option<Change>, rules::RuleError>>,
    ) -> Result<Value> {
        let mut changes = Vec::new();
        let mut failed = None;
        let t = std::time::Instant::now();
        for r in edit(&mut self.rules) {
            match r {
                Ok(c) => changes.extend(c),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            self.rules.undo(&changes);
            return Err(anyhow!(e).context("nothing was changed"));
        }
        let t_edit = t.elapsed();
        if let Err(e) = self.dp.apply(&self.rules, &changes) {
            crate::metrics::map_update_failed(crate::metrics::MapKind::Rules);
            self.rollback(&changes);
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let t_maps = t.elapsed();
        if let Err(e) = self.save() {
            self.rollback(&changes);
            return Err(e.context("nothing was changed"));
        }
        tracing::debug!(?t_edit, ?t_maps, total = ?t.elapsed(), changes = changes.len(), "rule change applied");
        let count = |f: fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
        Ok(json!({
            "added": count(|c| matches!(c, Change::Added(_))),
            "updated": count(|c| matches!(c, Change::Updated(..))),
            "removed": count(|c| matches!(c, Change::Removed(_))),
            "rules": self.rules.len(),
        }))
    }

    fn rollback(&mut self, changes: &[Change]) {
        self.rules.undo(changes);
        let inverse: Vec<Change> = changes
            .iter()
            .rev()
            .map(|c| match *c {
                Change::Added(r) => Change::Removed(r),
                Change::Updated(r, old) => {
                    Change::Updated(rules::Rule { action: old, ..r }, r.action)
                }
                Change::Removed(r) => Change::Added(r),
            })
            .collect();
        if let Err(e) = self.dp.apply(&self.rules, &inverse) {
            warn!("rolling back the kernel maps failed: {e:#}");
        }
    }

    /// Applies a services edit to the desired state, the maps and the state file, or to
    /// none of them.
    fn services_change(
        &mut self,
        edit: impl FnOnce(&mut Services) -> Result<(), ServiceError>,
    ) -> Result<Value> {
        let mut next = self.services.clone();
        edit(&mut next)?;
        if let Err(e) = self.dp.lb.sync(&next) {
            crate::metrics::map_update_failed(crate::metrics::MapKind::Services);
            let _ = self.dp.lb.sync(&self.services);
            return Err(e.context("updating the kernel maps; nothing was changed"));
        }
        let old = std::mem::replace(&mut self.services, next);
        if let Err(e) = self.dp.set_config(&self.rules).and_then(|_| self.save()) {
            self.services = old;
            let _ = self.dp.lb.sync(&self.services);
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        Ok(json!({ "services": self.services.by_vip.len() }))
    }

    /// Services forward packets: the kernel's FIB lookup from XDP needs forwarding on.
    fn check_forwarding(&self, vip: &Vip) -> Result<()> {
        let Some(iface) = &self.iface else {
            return Ok(());
        };
        let path = if vip.addr.is_ipv4() {
            format!("/proc/sys/net/ipv4/conf/{iface}/forwarding")
        } else {
            "/proc/sys/net/ipv6/conf/all/forwarding".to_string()
        };
        let on = std::fs::read_to_string(&path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        if !on {
            let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
            bail!(
                "forwarding is off ({path}): xlb forwards service traffic, enable it with `sysctl -w {key}=1`"
            );
        }
        Ok(())
    }

    fn vip_list(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .by_vip
            .values()
            .map(|s| {
                let backends: Vec<Value> = s
                    .backends
                    .iter()
                    .map(|(b, w)| json!({ "backend": b.to_string(), "weight": w }))
                    .collect();
                json!({
                    "service": s.vip.to_string(),
                    "mode": s.mode,
                    "affinity": if s.affinity_source { "source" } else { "none" },
                    "echo": s.echo,
                    "tcp_idle": s.tcp_idle,
                    "udp_idle": s.udp_idle,
                    "snat": s.snat.map(|a| a.to_string()),
                    "backends": backends,
                })
            })
            .collect();
        json!({ "services": services })
    }

    fn policy(&mut self, field: fn(&mut RuleSet) -> &mut Action, action: Action) -> Result<Value> {
        let old = std::mem::replace(field(&mut self.rules), action);
        let res = self.dp.set_config(&self.rules).and_then(|_| self.save());
        if let Err(e) = res {
            *field(&mut self.rules) = old;
            let _ = self.dp.set_config(&self.rules);
            return Err(e.context("nothing was changed"));
        }
        Ok(json!({ "policy": action }))
    }

    fn save(&self) -> Result<()> {
        match &self.state_path {
            Some(p) => state::save(p, &self.rules, &self.services),
            None => Ok(()),
        }
    }

    fn list(&self) -> Result<Value> {
        let end = self.rules.rules().map(|r| r.id + 1).max().unwrap_or(0);
        let hits = self.dp.all_rule_hits(end)?;
        let mut rules = Vec::with_capacity(self.rules.len());
        for r in self.rules.rules() {
            rules.push(json!({
                "id": r.id,
                "kind": r.matches.kind(),
                "match": r.matches.to_string(),
                "action": r.action,
                "hits": hits[r.id as usize],
            }));
        }
        Ok(json!({
            "default": self.rules.default_policy,
            "malformed": self.rules.malformed_policy,
            "rules": rules,
        }))
    }

    fn stats(&self) -> Result<Value> {
        let mut rows = Vec::new();
        let mut totals = serde_json::Map::new();
        for (reason, verdict, c) in self.dp.counters()? {
            let t = totals
                .entry(verdict.name())
                .or_insert_with(|| json!({"packets": 0u64, "bytes": 0u64}));
            t["packets"] = json!(t["packets"].as_u64().unwrap_or(0) + c.packets);
            t["bytes"] = json!(t["bytes"].as_u64().unwrap_or(0) + c.bytes);
            rows.push(json!({
                "reason": reason.name(),
                "verdict": verdict.name(),
                "malformed": reason.is_malformed(),
                "packets": c.packets,
                "bytes": c.bytes,
            }));
        }
        let traffic = crate::metrics::traffic_json(self)?;
        Ok(json!({
            "verdicts": totals,
            "reasons": rows,
            "rules": self.rules.len(),
            "services": traffic["services"],
            "flows": traffic["flows"],
        }))
    }
}

/// Refuses to start a second daemon on the same socket; removes a stale socket file.
async fn bind(socket: &std::path::Path) -> Result<UnixListener> {
    if UnixStream::connect(socket).await.is_ok() {
        bail!("another xlb daemon is already serving {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_one(stream: UnixStream, fw: Arc<Mutex<Edge>>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            tokio::task::spawn_blocking(move || fw.lock().expect("not poisoned").handle(req))
                .await?
        }
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xlb run needs root (CAP_BPF, CAP_NET_ADMIN): run it with sudo");
    }
    check_bpffs(&opts.bpffs)?;
    let stored = state::load(&opts.state)?;
    let listener = bind(&opts.socket).await?;
    let guard = SocketGuard(opts.socket.clone());
    let mut dp = Datapath::load(Some(&opts.bpffs))?;
    opts.monitor.configure(&mut dp);
    // Rules go in before the program is attached: the first packet already sees them.
    let mut fw = Edge::new(dp, stored, Some(opts.state.clone()))?;
    fw.iface = Some(opts.iface.clone());
    fw.dp.attach(&opts.iface, opts.mode)?;
    let monitor = crate::monitor::Monitor::prepare(&opts.monitor, &mut fw.dp).await?;
    info!(
        iface = %opts.iface, mode = ?opts.mode, rules = fw.rules.len(),
        socket = %opts.socket.display(), pins = %opts.bpffs.display(),
        "xlb attached and ready"
    );
    let fw = Arc::new(Mutex::new(fw));
    let _monitor = monitor.start(fw.clone());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, _) = conn?;
                let fw = fw.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, fw).await {
                        warn!("control connection: {e:#}");
                    }
                });
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("stopping: detaching from {}", opts.iface);
    let mut fw = fw.lock().expect("not poisoned");
    fw.dp.detach()?;
    fw.dp.unpin();
    drop(guard);
    Ok(())
}

struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fullnat source address must be this host's: the backends' replies are sent to it,
/// and the kernel answers ARP / neighbour solicitations for it.
fn ensure_local(a: IpAddr) -> Result<(), ServiceError> {
    let local = local_addresses().map_err(|e| ServiceError::Invalid(format!("{e:#}")))?;
    if !local.contains(&a) {
        return Err(ServiceError::Invalid(format!(
            "{a} is not an address of this host: add it to the interface towards the backends (ip addr add {a}/PREFIX dev IFACE) before using it as --snat"
        )));
    }
    Ok(())
}

/// Every address configured on this host's interfaces (getifaddrs).
fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing this host's addresses");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
