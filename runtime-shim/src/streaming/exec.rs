//! Exec over remotecommand v2–v4: the client opens an `error` stream plus `stdin`,
//! `stdout`, `stderr` and (with a tty) `resize` streams as the request asked; we run
//! `runc exec` with pipes, or with a pseudo-terminal whose size follows the resize
//! stream, and finish with the exit status on the error stream (v4: a metav1.Status,
//! `NonZeroExitCode` with the code as its cause; older: a plain message).

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::ExecRequest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{Sender, Stream};
use crate::runtime::Runtime;

/// How long the client has to open every stream it asked for, as upstream.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Streams {
    fn put(&mut self, s: Stream) {
        let slot = match s.header("streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            _ => return,
        };
        *slot = Some(s);
    }

    fn count(&self) -> usize {
        [
            self.error.is_some(),
            self.stdin.is_some(),
            self.stdout.is_some(),
            self.stderr.is_some(),
            self.resize.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

pub async fn run<W: AsyncWrite + Unpin + Send + 'static>(
    runtime: Arc<Runtime>,
    req: ExecRequest,
    protocol: &str,
    tx: Sender<W>,
    mut incoming: mpsc::UnboundedReceiver<Stream>,
) {
    let resize = req.tty && protocol != "v2.channel.k8s.io";
    let expected = 1
        + usize::from(req.stdin)
        + usize::from(req.stdout)
        + usize::from(req.stderr && !req.tty)
        + usize::from(resize);
    let mut streams = Streams::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while streams.count() < expected {
        match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(s)) => streams.put(s),
            _ => {
                tracing::warn!(container = %req.container_id, "exec: the client did not open its streams");
                let _ = tx.go_away().await;
                return;
            }
        }
    }
    let Some(error) = streams.error.take() else {
        let _ = tx.go_away().await;
        return;
    };
    let outcome = execute(&runtime, &req, &mut streams, &tx).await;
    let status = match protocol {
        "v4.channel.k8s.io" => status_v4(&req.cmd, &outcome),
        _ => match &outcome {
            Ok(0) => String::new(),
            Ok(code) => format!("command terminated with non-zero exit code: {code}"),
            Err(e) => e.clone(),
        },
    };
    let _ = tx.data(error.id, status.as_bytes(), true).await;
    let _ = tx.go_away().await;
}

/// Runs the command with the client's streams; its exit code, or why it did not run.
async fn execute<W: AsyncWrite + Unpin + Send + 'static>(
    runtime: &Runtime,
    req: &ExecRequest,
    streams: &mut Streams,
    tx: &Sender<W>,
) -> Result<i32, String> {
    let (mut cmd, process) = runtime
        .exec_command(&req.container_id, &req.cmd)
        .map_err(|e| e.to_string())?;
    cmd.kill_on_drop(true);
    let mut copies = Vec::new();
    let child = if req.tty {
        // The process gets a pty of ours as stdio; its size follows the resize stream.
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("allocating a pty: {e}"))?;
        let slave = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        cmd.stdin(slave(&pty.slave).map_err(|e| e.to_string())?)
            .stdout(slave(&pty.slave).map_err(|e| e.to_string())?)
            .stderr(slave(&pty.slave).map_err(|e| e.to_string())?);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting runc exec: {e}"))?;
        drop(pty.slave);
        if let Some(resize) = streams.resize.take() {
            let fd = pty.master.try_clone().map_err(|e| e.to_string())?;
            tokio::spawn(follow_resizes(resize, fd));
        }
        let master = tokio::fs::File::from_std(std::fs::File::from(pty.master));
        let (reader, writer) = tokio::io::split(master);
        if let Some(stdin) = streams.stdin.take() {
            tokio::spawn(pump_in(stdin, writer));
        }
        if let Some(stdout) = streams.stdout.take() {
            copies.push(tokio::spawn(pump_out(reader, stdout.id, tx.clone())));
        }
        child
    } else {
        cmd.stdin(if streams.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting runc exec: {e}"))?;
        if let (Some(stdin), Some(pipe)) = (streams.stdin.take(), child.stdin.take()) {
            tokio::spawn(pump_in(stdin, pipe));
        }
        for (pipe, stream) in [
            (child.stdout.take().map(boxed), streams.stdout.take()),
            (child.stderr.take().map(boxed), streams.stderr.take()),
        ] {
            match (pipe, stream) {
                (Some(p), Some(s)) => copies.push(tokio::spawn(pump_out(p, s.id, tx.clone()))),
                // Not asked for: drained so the process never blocks on a full pipe.
                (Some(mut p), None) => {
                    copies.push(tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut p, &mut tokio::io::sink()).await;
                    }));
                }
                _ => {}
            }
        }
        child
    };
    let mut child = child;
    let status = child.wait().await;
    let _ = std::fs::remove_file(&process);
    for c in copies {
        let _ = c.await;
    }
    let status = status.map_err(|e| format!("waiting for runc exec: {e}"))?;
    Ok(status.code().unwrap_or(128 + 9))
}

fn boxed<R: AsyncRead + Unpin + Send + 'static>(r: R) -> Box<dyn AsyncRead + Unpin + Send> {
    Box::new(r)
}

/// The client's stdin into the process; closed at the client's FIN.
async fn pump_in<W: AsyncWrite + Unpin>(mut s: Stream, mut w: W) {
    while let Some(data) = s.incoming.recv().await {
        if w.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Process output to a stream until EOF (or EIO: the pty's last writer is gone), then FIN.
async fn pump_out<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, id: u32, tx: Sender<W>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.data(id, &buf[..n], false).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.data(id, &[], true).await;
}

/// `{"Width":80,"Height":24}` messages (one JSON value after another) to TIOCSWINSZ.
async fn follow_resizes(mut s: Stream, master: OwnedFd) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    let mut pending = Vec::new();
    while let Some(data) = s.incoming.recv().await {
        pending.extend(data);
        let mut de = serde_json::Deserializer::from_slice(&pending).into_iter::<Size>();
        let mut used = 0;
        while let Some(Ok(size)) = de.next() {
            used = de.byte_offset();
            let ws = libc::winsize {
                ws_row: size.height,
                ws_col: size.width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the fd is a pty
            // master we own.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
        pending.drain(..used);
    }
}

/// What kubelet's v4 protocol writes on the error stream.
fn status_v4(cmd: &[String], outcome: &Result<i32, String>) -> String {
    let status = match outcome {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e,
            "reason": "InternalError",
        }),
    };
    status.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code_as_upstream() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 7".to_string()];
        let v: serde_json::Value = serde_json::from_str(&status_v4(&cmd, &Ok(7))).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        let ok: serde_json::Value = serde_json::from_str(&status_v4(&cmd, &Ok(0))).unwrap();
        assert_eq!(ok["status"], "Success");
    }
}
