//! Terminals of containers and exec'd processes. runc makes the pseudo-terminal inside
//! the container (its own devpts) and hands the master to whoever listens on the unix
//! socket given by `--console-socket`: one SCM_RIGHTS message, the pty's name as payload.
//! Both the exec path (daemon) and the container monitor receive masters this way.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// Reads the one message runc sends on an accepted console-socket connection and returns
/// the pty master it carries. Blocks until it arrives (the caller sets a timeout).
pub fn receive_master(conn: &impl AsRawFd) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(io::Error::from)?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(rights) = c {
            fds.extend(rights);
        }
    }
    // SAFETY: the kernel just installed these descriptors in our table for us; each is
    // owned exactly once here.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(io::Error::other(format!(
            "the console socket carried {} descriptors, not one pty master",
            owned.len()
        )));
    }
    Ok(owned.remove(0))
}

/// Sets the terminal size of the pty behind `master` (TIOCSWINSZ); the kernel sends
/// SIGWINCH to the terminal's foreground process group.
pub fn set_size(master: &impl AsRawFd, width: u16, height: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer on an fd we hold.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{ControlMessage, sendmsg};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_master_sent_as_runc_does_arrives_and_takes_a_size() {
        let (a, b) = UnixStream::pair().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[io::IoSlice::new(b"/dev/pts/7")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = receive_master(&b).unwrap();
        set_size(&master, 120, 40).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into our local.
        assert_eq!(
            unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
            0
        );
        assert_eq!((ws.ws_col, ws.ws_row), (120, 40));
        // A message without a descriptor is an error, not a hang.
        a.set_nonblocking(false).unwrap();
        std::io::Write::write_all(&mut &a, b"no fd").unwrap();
        assert!(receive_master(&b).is_err());
    }
}
