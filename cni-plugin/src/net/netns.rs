//! Entering network namespaces.
//!
//! `setns` changes the namespace of the calling thread only, so work that must happen
//! inside a pod's namespace runs on a short-lived dedicated thread: the caller's thread
//! (and every tokio worker) stays in the host namespace whatever happens. Netlink is the
//! main user: a netlink socket stays bound to the namespace it was created in, so opening
//! it on such a thread gives a handle that configures the pod from anywhere.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

use super::NetError;

/// Where `ip netns add NAME` puts named namespaces.
pub const NAMED_NETNS_DIR: &str = "/var/run/netns";

/// An open network namespace; the open file keeps it alive and addressable by fd.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens a namespace by path (`/var/run/netns/x`, `/proc/PID/ns/net`) or, for a bare
    /// name without '/', by its `ip netns` name. Fails if the file is not a netns.
    pub fn open(name_or_path: impl AsRef<Path>) -> Result<NetNs, NetError> {
        let given = name_or_path.as_ref();
        let path = if given.components().count() == 1 && !given.has_root() {
            Path::new(NAMED_NETNS_DIR).join(given)
        } else {
            given.to_path_buf()
        };
        let file = File::open(&path).map_err(|source| NetError::OpenNetns {
            path: path.clone(),
            source,
        })?;
        // Checking the filesystem type up front turns "setns: EINVAL" deep inside a
        // setup into a clear error before anything has been changed.
        let fs = fstatfs(file.as_fd()).map_err(|e| NetError::OpenNetns {
            path: path.clone(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetError::NotANetns { path });
        }
        Ok(NetNs { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's fd, valid while `self` lives (for IFLA_NET_NS_FD).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a new thread that has entered this namespace, and waits for it.
    /// The thread ends afterwards, so nothing else ever runs in the wrong namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetError::EnterNetns {
                        path: self.path.clone(),
                        source: e.into(),
                    }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A netlink handle whose requests act inside this namespace. Must be called from
    /// within a tokio runtime, which drives the connection.
    pub fn netlink(&self) -> Result<rtnetlink::Handle, NetError> {
        let socket = self.run(|| Socket::new(NETLINK_ROUTE).map(into_owned_fd))?;
        let socket = socket.map_err(|source| NetError::Socket {
            op: format!("open a netlink socket in {}", self.path.display()),
            source,
        })?;
        Ok(connect(socket))
    }
}

/// A netlink handle for the namespace the calling process lives in (the host).
pub fn host_netlink() -> Result<rtnetlink::Handle, NetError> {
    let socket = Socket::new(NETLINK_ROUTE).map_err(|source| NetError::Socket {
        op: "open a netlink socket".into(),
        source,
    })?;
    Ok(connect(into_owned_fd(socket)))
}

/// An owned fd can leave the namespace thread; the socket stays bound to that namespace.
fn into_owned_fd(socket: Socket) -> OwnedFd {
    // SAFETY: `into_raw_fd` released the fd, so the OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) }
}

/// Wraps the socket in a connection driven by a task on the current tokio runtime; the
/// task ends when the last clone of the handle is dropped.
fn connect(socket: OwnedFd) -> rtnetlink::Handle {
    // SAFETY: ownership of the fd moves into the TokioSocket.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = NetNs::open(f.path()).unwrap_err();
        assert!(matches!(e, NetError::NotANetns { .. }), "{e}");
    }

    #[test]
    fn a_missing_name_says_where_it_looked() {
        let e = NetNs::open("vpccni-no-such-netns").unwrap_err();
        assert!(
            e.to_string()
                .contains("/var/run/netns/vpccni-no-such-netns"),
            "{e}"
        );
    }

    #[test]
    fn runs_a_closure_inside_our_own_namespace() {
        let ns = NetNs::open("/proc/self/ns/net").unwrap();
        let inside = ns
            .run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        assert_eq!(inside, std::fs::read_link("/proc/self/ns/net").unwrap());
    }
}
