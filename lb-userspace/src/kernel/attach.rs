//! Attaching the program to interfaces through BPF links, pinned so that the datapath
//! outlives the daemon; a restart swaps its program into the pinned links atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::{
    Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::PROG_NAME;
use tracing::{info, warn};

use super::datapath::Datapath;
use crate::model::interface::AttachMode;

/// How long an attach retries while the interface still holds a link being released
/// (the kernel frees a link whose last reference went in a deferred work item).
const ATTACH_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The program attached to one interface through a BPF link.
pub(super) struct Attached {
    pub(super) iface: String,
    pub(super) mode: AttachMode,
    /// Closing the last reference to a link detaches it: while `pin` exists the
    /// program stays attached without us.
    pub(super) link: FdLink,
    pub(super) pin: Option<PathBuf>,
}

impl Datapath {
    /// Attaches to `iface` (one more interface). A link pinned there by an earlier run
    /// in the same mode gets this program swapped in atomically (no packet misses the
    /// hook); otherwise a new link is made (and pinned, with a pin directory). Errors
    /// name the interface and the reason.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        if self.links.iter().any(|a| a.iface == iface) {
            bail!("xlb is already attached to '{iface}'");
        }
        let c = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: c is a valid C string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            bail!("unknown interface '{iface}'");
        }
        let mut adopt = None;
        if let Some(p) = &self.pins {
            for old in p.links().into_iter().filter(|l| l.iface == iface) {
                if old.mode == mode {
                    adopt = Some(old.path);
                } else {
                    // One XDP mode at a time on an interface: the old link goes first.
                    warn!(iface, from = ?old.mode, to = ?mode, "changing the XDP mode: the interface is without xlb until it is attached again");
                    let _ = std::fs::remove_file(&old.path);
                }
            }
        }
        let prog: &mut Xdp = self
            .bpf
            .program_mut(PROG_NAME)
            .expect("loaded")
            .try_into()?;
        let replaced = adopt.and_then(|path| match swap_into(prog, &path) {
            Ok(link) => Some((link, path)),
            Err(e) => {
                // The interface went away (and maybe came back) since the link was made.
                warn!(
                    iface,
                    "the pinned link cannot be reused ({e:#}): attaching anew"
                );
                let _ = std::fs::remove_file(&path);
                None
            }
        });
        let (link, pin) = match replaced {
            Some((link, path)) => {
                info!(iface, "took over the running datapath's link");
                (link, Some(path))
            }
            None => {
                let link = attach_new(prog, iface, mode)?;
                match &self.pins {
                    Some(p) => {
                        let path = p.link(iface, mode);
                        let pinned = link.pin(&path).map_err(|e| {
                            anyhow!("pinning the link of '{iface}' at {}: {e}", path.display())
                        })?;
                        (FdLink::from(pinned), Some(path))
                    }
                    None => (link, None),
                }
            }
        };
        self.links.push(Attached {
            iface: iface.to_string(),
            mode,
            link,
            pin,
        });
        Ok(())
    }

    /// The interfaces the program is attached to, in attach order.
    pub fn attached(&self) -> Vec<(String, AttachMode)> {
        self.links
            .iter()
            .map(|a| (a.iface.clone(), a.mode))
            .collect()
    }

    /// Detaches from one interface (if attached).
    pub fn detach_from(&mut self, iface: &str) -> Result<()> {
        let Some(i) = self.links.iter().position(|a| a.iface == iface) else {
            return Ok(());
        };
        let a = self.links.remove(i);
        if let Some(pin) = &a.pin {
            std::fs::remove_file(pin).with_context(|| {
                format!("detaching XDP from '{iface}': removing {}", pin.display())
            })?;
        }
        // Our reference was the last: the link goes, and the program with it.
        drop(a.link);
        Ok(())
    }

    /// Detaches from every interface.
    pub fn detach(&mut self) -> Result<()> {
        let mut first_error = None;
        for (iface, ..) in self.attached().into_iter().rev() {
            if let Err(e) = self.detach_from(&iface) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// After every interface is attached: removes the links an earlier run pinned on
    /// interfaces this one does not use, and the program arrays of builds no longer
    /// attached anywhere. Returns the interfaces it detached.
    pub fn prune(&mut self) -> Vec<String> {
        let Some(p) = &self.pins else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for old in p.links() {
            if !self.links.iter().any(|a| a.pin.as_ref() == Some(&old.path)) {
                let _ = std::fs::remove_file(&old.path);
                gone.push(old.iface);
            }
        }
        for (_, path) in p.jumps() {
            if Some(&path) != self.jump_pin.as_ref() {
                let _ = std::fs::remove_file(path);
            }
        }
        gone
    }

    /// Removes every pin (after `detach`): the maps go with this process.
    pub fn unpin(&mut self) {
        if let Some(p) = self.pins.take()
            && let Err(e) = p.remove_all()
        {
            warn!("removing the pins: {e:#}");
        }
        self.jump_pin = None;
    }
}

/// Swaps `prog` into the link pinned at `path` (BPF_LINK_UPDATE): atomic for packets.
fn swap_into(prog: &mut Xdp, path: &Path) -> Result<FdLink> {
    let pinned = PinnedLink::from_pin(path)?;
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    let id = prog.attach_to_link(link)?;
    Ok(prog.take_link(id)?.try_into()?)
}

/// A new link of `prog` on `iface`, retried for a moment while the interface still
/// holds a link that is being released.
fn attach_new(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<FdLink> {
    let flags = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    };
    let deadline = std::time::Instant::now() + ATTACH_RETRY;
    let id = loop {
        match prog.attach(iface, flags) {
            Ok(id) => break id,
            Err(e) if std::time::Instant::now() < deadline && busy(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => bail!(
                "interface '{iface}' refused XDP in {mode:?} mode: {e} (try --mode generic, or mode = \"generic\" in the configuration)"
            ),
        }
    };
    prog.take_link(id)?.try_into().map_err(|e| {
        anyhow!("the XDP link of '{iface}' is not a BPF link (kernel older than 5.9?): {e}")
    })
}

/// Whether an attach failed because the interface holds another XDP program.
fn busy(e: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(io.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST));
        }
        source = err.source();
    }
    false
}
