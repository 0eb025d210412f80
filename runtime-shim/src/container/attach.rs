//! The attach socket a container's monitor serves (`<state>/io/<id>.attach`), so CRI
//! Attach reaches a running container's stdio whichever daemon started it. Every
//! client gets the container's output from the moment it connects; what clients send
//! goes to the container's stdin (or terminal).
//!
//! Both directions are frames `kind: u8, length: u32 BE, payload`: output is
//! [`STDOUT`]/[`STDERR`], input is [`STDIN`], [`STDIN_CLOSE`] (the client's end of
//! input: the container's stdin closes if it is `stdin_once`) and [`RESIZE`] (width and
//! height as u16 BE). The monitor closes every client when the container exits.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::time::Duration;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STDIN_CLOSE: u8 = 3;
pub const RESIZE: u8 = 4;

/// Frames larger than this are refused: nothing legitimate sends them.
const MAX_FRAME: usize = 1 << 20;
/// A client that cannot take output this long is dropped instead of stalling the
/// container (and its log).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A frame's head: its kind and payload length.
pub fn parse_head(head: [u8; 5]) -> io::Result<(u8, usize)> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!("attach frame of {len} bytes")));
    }
    Ok((head[0], len))
}

/// The next frame; `None` at a clean end of the connection.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let (kind, len) = parse_head(head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Where a container's input goes.
pub enum Input {
    /// The write end of the container's stdin pipe; `None` once closed.
    Pipe(Mutex<Option<std::fs::File>>),
    /// The terminal's master.
    Terminal(OwnedFd),
    /// The container was created without stdin.
    None,
}

pub struct Hub {
    clients: Mutex<Vec<UnixStream>>,
    input: Input,
    stdin_once: bool,
}

impl Hub {
    pub fn new(input: Input, stdin_once: bool) -> Self {
        Hub {
            clients: Mutex::new(Vec::new()),
            input,
            stdin_once,
        }
    }

    /// Output of the container to every client; clients that fail are dropped.
    pub fn broadcast(&self, kind: u8, data: &[u8]) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.is_empty() {
            return;
        }
        let f = frame(kind, data);
        clients.retain_mut(|c| c.write_all(&f).is_ok());
    }

    /// Ends every attach session (the container exited).
    pub fn close_all(&self) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        for c in clients.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn input(&self, kind: u8, payload: &[u8]) -> io::Result<()> {
        match (kind, &self.input) {
            (STDIN, Input::Pipe(pipe)) => {
                if let Some(f) = pipe.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    f.write_all(payload)?;
                }
            }
            (STDIN, Input::Terminal(master)) => {
                (&std::fs::File::from(master.try_clone()?)).write_all(payload)?;
            }
            (STDIN_CLOSE, Input::Pipe(pipe)) if self.stdin_once => {
                pipe.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
            (RESIZE, Input::Terminal(master)) if payload.len() == 4 => {
                let width = u16::from_be_bytes([payload[0], payload[1]]);
                let height = u16::from_be_bytes([payload[2], payload[3]]);
                super::console::set_size(master, width, height)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Accepts clients until the listener fails; each client's input is read by a
    /// thread of its own.
    pub fn serve(self: std::sync::Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let Ok(reader) = conn.try_clone() else {
                continue;
            };
            let _ = conn.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
            self.clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            let hub = self.clone();
            std::thread::spawn(move || {
                let mut reader = reader;
                while let Ok(Some((kind, payload))) = read_frame(&mut reader) {
                    if hub.input(kind, &payload).is_err() {
                        break;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut bytes = frame(STDOUT, b"hello");
        bytes.extend(frame(RESIZE, &[0, 80, 0, 24]));
        let mut r = bytes.as_slice();
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((RESIZE, vec![0, 80, 0, 24]))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let huge = [STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn clients_get_output_and_their_input_reaches_stdin_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attach");
        let listener = UnixListener::bind(&path).unwrap();
        let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let hub = Arc::new(Hub::new(
            Input::Pipe(Mutex::new(Some(std::fs::File::from(stdin_w)))),
            true,
        ));
        std::thread::spawn({
            let hub = hub.clone();
            move || hub.serve(listener)
        });
        let mut client = UnixStream::connect(&path).unwrap();
        // Registered once the hub accepted it: output sent before may be missed.
        while hub.clients.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        hub.broadcast(STDERR, b"oops");
        assert_eq!(
            read_frame(&mut client).unwrap(),
            Some((STDERR, b"oops".to_vec()))
        );
        client.write_all(&frame(STDIN, b"typed")).unwrap();
        client.write_all(&frame(STDIN_CLOSE, b"")).unwrap();
        let mut got = String::new();
        std::fs::File::from(stdin_r)
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(
            got, "typed",
            "stdin_once: the first client's close is the container's EOF"
        );
        hub.close_all();
        assert_eq!(read_frame(&mut client).unwrap(), None);
    }
}
