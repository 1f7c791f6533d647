//! Network-namespace harness: namespaces, veth links, HTTP servers that answer with
//! their own name, and the xlb daemon, each removed when its guard drops (also when a
//! test fails). Names carry the test process's pid, so parallel tests never collide and
//! leftovers of an interrupted run (dead pid) are removed by the next one.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Once,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;

/// Every name the harness makes starts with this.
pub const PREFIX: &str = "xlbt";

static SEQ: AtomicU32 = AtomicU32::new(0);
static CLEANUP: Once = Once::new();

fn unique(tag: &str) -> String {
    format!(
        "{PREFIX}-{}-{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a harness-made name, if it is one.
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(&format!("{PREFIX}-"))?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes namespaces and directories left by harness runs whose process is gone.
pub fn cleanup_stale() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if owner(name).is_some_and(|p| !pid_alive(p)) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if owner(&name).is_some_and(|p| !pid_alive(p)) {
                let _ = Command::new("umount")
                    .arg(e.path().join("bpffs"))
                    .stderr(Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Runs a command, failing with its stderr if it fails.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        CLEANUP.call_once(cleanup_stale);
        let name = unique(tag);
        sh(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        // Replies and forwarding between test links must not be filtered by rp_filter.
        let _ = ns.run(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<String> {
        sh(&mut self.cmd(args))
    }

    /// Whether the command succeeds (for probes like ping and curl).
    pub fn ok(&self, args: &[&str]) -> bool {
        self.cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `curl` in this namespace: the body on success.
    pub fn curl(&self, url: &str) -> Result<String> {
        self.run(&["curl", "-sS", "--max-time", "2", "-g", url])
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair `a_if` in `a` and `b_if` in `b`, up, with the given addresses (CIDR).
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> Result<()> {
    sh(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["ip", "addr", "add", addr, "dev", ifname];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.run(&args)?;
        }
        ns.run(&["ip", "link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// A server thread inside a namespace: binds there, reports whether binding worked,
/// then calls `step` until the guard drops (each step waits briefly for work, so the
/// thread notices the stop flag).
pub struct NsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NsServer {
    pub fn start<S: 'static>(
        ns: &Netns,
        bind: impl FnOnce() -> Result<S> + Send + 'static,
        mut step: impl FnMut(&S) + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (path, flag) = (ns.path(), stop.clone());
        let thread = std::thread::spawn(move || {
            let server = match enter(&path).and_then(|_| bind()) {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                step(&server);
            }
        });
        rx.recv().context("server thread")??;
        Ok(NsServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves the calling thread into a network namespace (only this thread).
pub fn enter(ns_path: &Path) -> Result<()> {
    let f =
        std::fs::File::open(ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace fd affects only the calling thread here.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Answers requests on one connection until the client closes it (keep-alive).
fn serve_conn(mut s: std::net::TcpStream, body: &str) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    loop {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        got.drain(..end);
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// One GET on an open connection; the body.
pub fn http_get(s: &mut std::net::TcpStream) -> Result<String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: xlb\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .context("no Content-Length")?;
            if buf.len() >= h + 4 + len {
                return Ok(String::from_utf8_lossy(&buf[h + 4..h + 4 + len]).to_string());
            }
        }
    }
}

/// Runs `f` on a thread inside `ns` (real sockets of that namespace) and returns its
/// result.
pub fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = ns.path();
    std::thread::spawn(move || enter(&path).map(|_| f()))
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

impl NsServer {
    /// A plain HTTP/1.1 server answering every request with `body` (keep-alive: a
    /// connection gets as many answers as it asks for).
    pub fn http(ns: &Netns, addr: &str, body: &str) -> Result<Self> {
        let addr: SocketAddr = addr.parse().context("server address")?;
        let body = body.to_string();
        let bind = move || -> Result<TcpListener> {
            let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        NsServer::start(ns, bind, move |listener: &TcpListener| {
            match listener.accept() {
                Ok((s, _)) => {
                    let body = body.clone();
                    std::thread::spawn(move || serve_conn(s, &body));
                }
                // Nothing pending: wait a little for the next connection.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        })
    }

    /// A UDP server answering every datagram with `body`, from the address it is bound
    /// to (for dsr, bind the service address so replies come from it).
    pub fn udp(ns: &Netns, addr: &str, body: &str) -> Result<Self> {
        let addr: SocketAddr = addr.parse().context("server address")?;
        let body = body.to_string();
        let bind = move || -> Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        };
        let mut buf = [0u8; 2048];
        NsServer::start(ns, bind, move |sock: &std::net::UdpSocket| {
            if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(body.as_bytes(), peer);
            }
        })
    }
}

/// One datagram to `to` from a fresh socket in the caller's namespace; the reply.
pub fn udp_ask(to: SocketAddr) -> Result<String> {
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = std::net::UdpSocket::bind(local)?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send(b"who")?;
    let mut buf = [0u8; 2048];
    let n = s
        .recv(&mut buf)
        .with_context(|| format!("no UDP answer from {to}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A private directory with a bpffs mounted inside (`bpffs/`), removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    /// A private directory without a bpffs (for files only).
    pub fn plain(tag: &str) -> Result<Self> {
        CLEANUP.call_once(cleanup_stale);
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path)?;
        Ok(TestDir { path })
    }

    pub fn new(tag: &str) -> Result<Self> {
        CLEANUP.call_once(cleanup_stale);
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(path.join("bpffs"))?;
        let dir = TestDir { path };
        sh(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path.join("bpffs")))?;
        Ok(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.path.join("bpffs").exists() {
            let _ = Command::new("umount").arg(self.path.join("bpffs")).status();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The xlb binary: $XLB_BIN, or `xlb` next to the running test's target directory.
pub fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/xlb
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("xlb"))
        .expect("target dir")
}

/// `xlb run` inside a namespace, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `xlb run` in `ns` on `iface` with its socket, state and pins in `dir`,
    /// and waits until the control socket answers.
    pub fn start(ns: &Netns, iface: &str, dir: &TestDir, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--iface", iface];
        args.extend_from_slice(extra);
        Daemon::start_with(ns, dir, &args)
    }

    /// Starts `xlb run ARGS` in `ns` with its socket, state and pins in `dir` (e.g.
    /// `--config FILE`), and waits until the control socket answers.
    pub fn start_with(ns: &Netns, dir: &TestDir, args: &[&str]) -> Result<Self> {
        Daemon::start_env(ns, dir, args, &[])
    }

    /// `start_with`, with `env` set for the daemon (e.g. `NOTIFY_SOCKET`).
    pub fn start_env(
        ns: &Netns,
        dir: &TestDir,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let socket = dir.path.join("xlb.sock");
        let log = dir.path.join("xlb.log");
        let logf = append_log(&log)?;
        let bin = xlb_bin();
        let mut cmd = ns.cmd(&[
            bin.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "run",
        ]);
        cmd.arg("--bpffs")
            .arg(dir.path.join("bpffs/xlb"))
            .arg("--state")
            .arg(dir.path.join("state"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf);
        // If the test process dies without dropping us (SIGKILL, abort), the daemon gets
        // SIGTERM and detaches; `ip netns exec` execs xlb, which keeps this setting.
        die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().context("spawning xlb run")?;
        let mut d = Daemon {
            child: Some(child),
            socket,
            log,
        };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.cli(&["stats", "--json"]).status.success() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "xlb run exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "xlb run did not answer on {} within 60 s",
                    self.socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's pid (`ip netns exec` execs xlb).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Runs the xlb CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(xlb_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running the xlb CLI")
    }

    /// Runs the CLI; its output; panics on failure (with the CLI's error).
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "xlb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and parses its `--json` output; panics on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "xlb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// SIGTERM and wait for a clean exit; its status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("xlb run did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// A test's log file, opened for appending (created if missing).
pub fn append_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The child `cmd` starts gets `signal` when the test process dies (SIGKILL, abort)
/// without dropping its handle.
pub fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
}

/// A background process inside a namespace (a peer's daemon, a load generator),
/// killed on drop; it also gets SIGKILL if the test process dies first.
pub struct Spawned {
    pub child: Child,
}

impl Spawned {
    /// Starts `args` in `ns`, its output appended to `log`.
    pub fn start(ns: &Netns, args: &[&str], log: &Path) -> Result<Self> {
        let out = append_log(log)?;
        let mut cmd = ns.cmd(args);
        cmd.stdout(out.try_clone()?).stderr(out);
        die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().with_context(|| format!("spawning {args:?}"))?;
        Ok(Spawned { child })
    }

    /// Fails if the process has already exited (a bad config, a port in use).
    pub fn check_running(&mut self, what: &str) -> Result<()> {
        if let Some(s) = self.child.try_wait()? {
            bail!("{what} exited early: {s}");
        }
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration template with every `{key}` replaced by its value.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// Polls `ready` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what}: not ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `n` connections from `client` to `vip`, one GET each: how many each backend answered.
pub fn spread(
    client: &Netns,
    vip: SocketAddr,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    in_ns(client, move || {
        let mut count = std::collections::HashMap::new();
        for _ in 0..n {
            let mut s = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .expect("connect to the service");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            *count
                .entry(http_get(&mut s).expect("a response"))
                .or_insert(0) += 1;
        }
        count
    })
    .unwrap()
}

/// A steady client loop: `n` requests from `client` to `vip`, a connection each (5 s
/// timeouts), in order, on its own thread; every answer or error is recorded.
pub struct ClientLoop {
    done: Arc<std::sync::atomic::AtomicUsize>,
    thread: JoinHandle<Vec<std::result::Result<String, String>>>,
}

impl ClientLoop {
    pub fn start(client: &Netns, vip: SocketAddr, n: usize) -> Self {
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counter, ns) = (done.clone(), client.path());
        let thread = std::thread::spawn(move || {
            enter(&ns).expect("entering the client namespace");
            (0..n)
                .map(|i| {
                    let r = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                        .map_err(anyhow::Error::from)
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            http_get(&mut s)
                        })
                        .map_err(|e| format!("request {i}: {e:#}"));
                    counter.store(i + 1, Ordering::SeqCst);
                    r
                })
                .collect()
        });
        ClientLoop { done, thread }
    }

    /// Requests finished so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have finished (at most 120 s: a stuck loop fails).
    pub fn wait(&self, n: usize) {
        wait_until(&format!("{n} requests"), Duration::from_secs(120), || {
            self.done() >= n || self.thread.is_finished()
        })
        .unwrap();
    }

    /// The answers of every request, in order.
    pub fn finish(self) -> Vec<std::result::Result<String, String>> {
        self.thread.join().expect("the client loop")
    }
}
