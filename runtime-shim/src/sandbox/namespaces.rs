//! A pod's network, IPC and UTS namespaces, created once and pinned by bind mounts so
//! that they live as long as the sandbox without any infra process holding them; each
//! container joins them by path. The network namespace is pinned under
//! `/var/run/netns`, where `ip netns` and CNI tooling look.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// Creates and pins new namespaces; a `None` path means the pod uses the host's
/// (hostNetwork, hostIPC). On error nothing stays pinned.
pub fn create(
    net: Option<&Path>,
    ipc: Option<&Path>,
    uts: Option<&Path>,
    hostname: &str,
) -> io::Result<PodNamespaces> {
    let (net, ipc, uts, hostname) = (
        net.map(Path::to_path_buf),
        ipc.map(Path::to_path_buf),
        uts.map(Path::to_path_buf),
        hostname.to_string(),
    );
    // unshare(2) on a thread of its own: the namespaces change for that thread only,
    // and it exits afterwards, so no tokio worker ever runs inside a pod's namespaces.
    std::thread::spawn(move || -> io::Result<PodNamespaces> {
        let mut flags = CloneFlags::empty();
        for (path, flag) in [
            (&net, CloneFlags::CLONE_NEWNET),
            (&ipc, CloneFlags::CLONE_NEWIPC),
            (&uts, CloneFlags::CLONE_NEWUTS),
        ] {
            if path.is_some() {
                flags |= flag;
            }
        }
        unshare(flags).map_err(io::Error::from)?;
        if uts.is_some() && !hostname.is_empty() {
            nix::unistd::sethostname(&hostname).map_err(io::Error::from)?;
        }
        let mut pinned: Vec<PathBuf> = vec![];
        let result = (|| {
            if net.is_some() {
                loopback_up()?;
            }
            let pins = [("net", &net), ("ipc", &ipc), ("uts", &uts)]
                .into_iter()
                .filter_map(|(k, p)| p.clone().map(|p| (k, p)));
            for (kind, target) in pins {
                pin(&format!("/proc/thread-self/ns/{kind}"), &target)?;
                pinned.push(target);
            }
            Ok(())
        })();
        if let Err(e) = result {
            for p in pinned {
                let _ = unpin(&p);
            }
            return Err(e);
        }
        Ok(PodNamespaces { net, ipc, uts })
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

fn pin(source: &str, target: &Path) -> io::Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(target)?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = std::fs::remove_file(target);
        io::Error::other(format!("pinning {source} at {}: {e}", target.display()))
    })
}

/// Unmounts and removes a pinned namespace; succeeds if it is already gone.
pub fn unpin(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(io::Error::other(format!(
                "unmounting {}: {e}",
                target.display()
            )));
        }
    }
    match std::fs::remove_file(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the pin file at `target` if no namespace is mounted on it (what a crash
/// between creating the file and the bind mount leaves).
pub fn remove_unmounted(target: &Path) -> io::Result<()> {
    const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);
    match nix::sys::statfs::statfs(target) {
        Ok(fs) if fs.filesystem_type() != NSFS_MAGIC => std::fs::remove_file(target),
        Err(nix::errno::Errno::ENOENT) | Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn remove(ns: &PodNamespaces) -> io::Result<()> {
    for p in [&ns.net, &ns.ipc, &ns.uts].into_iter().flatten() {
        unpin(p)?;
    }
    Ok(())
}

/// Brings `lo` up in the current network namespace (a new one starts with it down, and
/// pods expect 127.0.0.1 to work even before or without CNI).
fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket, an ifreq we own, and ioctls that only read and
    // write that struct; the fd is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}
