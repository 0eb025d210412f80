//! Kubernetes' remotecommand protocol (v2–v4) for Exec and Attach: the client opens an
//! `error` stream plus `stdin`, `stdout`, `stderr` and (with a tty, v3+) `resize`
//! streams as the request asked; we run the command (or attach to the container) and
//! finish with the outcome on the error stream (v4: a metav1.Status, `NonZeroExitCode`
//! with the code as its cause; older: the message alone, nothing on success).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{AttachRequest, ExecRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{Sender, Stream};
use crate::runtime::Runtime;

/// How long the client has to open every stream it asked for, as upstream.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a remote command runs.
pub enum Target {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Target {
    /// (stdin, stdout, stderr, tty) as asked for.
    fn options(&self) -> (bool, bool, bool, bool) {
        match self {
            Target::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Target::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        }
    }
}

/// The client's streams, by type.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
    error: Option<Stream>,
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

/// How a remote command ended: an exit code, or why it could not run (the message
/// upstream puts in its InternalError).
pub type Outcome = Result<i32, String>;

pub async fn run<W: AsyncWrite + Unpin + Send + 'static>(
    runtime: Arc<Runtime>,
    target: Target,
    protocol: &str,
    tx: Sender<W>,
    mut incoming: mpsc::UnboundedReceiver<Stream>,
) {
    let (stdin, stdout, stderr, tty) = target.options();
    let expected = 1
        + usize::from(stdin)
        + usize::from(stdout)
        + usize::from(stderr && !tty)
        + usize::from(tty && protocol != "v2.channel.k8s.io");
    let mut streams = Streams::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while streams.count() < expected {
        match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(s)) => streams.put(s),
            _ => {
                tracing::warn!("remote command: the client did not open its streams");
                let _ = tx.go_away().await;
                return;
            }
        }
    }
    let Some(error) = streams.error.take() else {
        let _ = tx.go_away().await;
        return;
    };
    let (outcome, cmd) = match &target {
        Target::Exec(r) => (
            exec(&runtime, r, &mut streams, &tx)
                .await
                .map_err(|e| format!("error executing command in container: {e}")),
            r.cmd.clone(),
        ),
        Target::Attach(r) => (
            super::attach::run(&runtime, r, &mut streams, &tx)
                .await
                .map(|()| 0)
                .map_err(|e| format!("error attaching to container: {e}")),
            Vec::new(),
        ),
    };
    let status = render_status(protocol, &cmd, &outcome);
    let _ = tx.data(error.id, &status, true).await;
    let _ = tx.go_away().await;
}

/// Runs the command with the client's streams; its exit code, or why it did not run.
async fn exec<W: AsyncWrite + Unpin + Send + 'static>(
    runtime: &Runtime,
    req: &ExecRequest,
    streams: &mut Streams,
    tx: &Sender<W>,
) -> Outcome {
    let mut session = runtime
        .start_exec(
            &req.container_id,
            &req.cmd,
            req.tty,
            streams.stdin.is_some(),
        )
        .map_err(|e| e.to_string())?;
    let mut copies = Vec::new();
    if req.tty {
        let master = session.terminal().await?;
        copies.extend(terminal_pumps(master, streams, tx).map_err(|e| e.to_string())?);
    } else {
        // Only the process's own output goes to the client, not runc's error line.
        session.started().await?;
        let child = &mut session.child;
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
                (Some(mut p), None) => copies.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut p, &mut tokio::io::sink()).await;
                })),
                _ => {}
            }
        }
    }
    let code = session.wait().await;
    for c in copies {
        let _ = c.await;
    }
    code
}

/// The terminal's output to the stdout stream, the stdin stream into it, resize
/// messages to its size. Returns the output copy to wait for.
fn terminal_pumps<W: AsyncWrite + Unpin + Send + 'static>(
    master: OwnedFd,
    streams: &mut Streams,
    tx: &Sender<W>,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    // Separate descriptors for reading and writing: a tokio File does one operation at
    // a time, and a read that waits for output must not hold up keystrokes.
    let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    if let Some(resize) = streams.resize.take() {
        tokio::spawn(follow_resizes(resize, master));
    }
    if let Some(stdin) = streams.stdin.take() {
        tokio::spawn(pump_in(stdin, writer));
    }
    let mut copies = Vec::new();
    match streams.stdout.take() {
        Some(stdout) => copies.push(tokio::spawn(pump_out(reader, stdout.id, tx.clone()))),
        None => copies.push(tokio::spawn(async move {
            let mut reader = reader;
            let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        })),
    }
    Ok(copies)
}

fn boxed<R: AsyncRead + Unpin + Send + 'static>(r: R) -> Box<dyn AsyncRead + Unpin + Send> {
    Box::new(r)
}

/// The client's stdin into the process; closed at the client's FIN.
pub async fn pump_in<W: AsyncWrite + Unpin>(mut s: Stream, mut w: W) {
    while let Some(data) = s.incoming.recv().await {
        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Process output to a stream until EOF (or EIO: the pty's last writer is gone), then FIN.
pub async fn pump_out<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    id: u32,
    tx: Sender<W>,
) {
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

/// The terminal sizes the resize stream carries: `{"Width":80,"Height":24}` JSON values
/// one after another (client-go's TerminalSize).
pub struct Resizes {
    stream: Stream,
    pending: Vec<u8>,
}

impl Resizes {
    pub fn new(stream: Stream) -> Self {
        Resizes {
            stream,
            pending: Vec::new(),
        }
    }

    /// The next (width, height); `None` when the client closes the stream.
    pub async fn next(&mut self) -> Option<(u16, u16)> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Size {
            width: u16,
            height: u16,
        }
        loop {
            let mut de = serde_json::Deserializer::from_slice(&self.pending).into_iter::<Size>();
            match de.next() {
                Some(Ok(size)) => {
                    let used = de.byte_offset();
                    self.pending.drain(..used);
                    return Some((size.width, size.height));
                }
                // Incomplete: wait for more. Garbage: drop it, as upstream logs and goes on.
                Some(Err(e)) if !e.is_eof() => self.pending.clear(),
                _ => {}
            }
            self.pending.extend(self.stream.incoming.recv().await?);
        }
    }
}

async fn follow_resizes(stream: Stream, master: OwnedFd) {
    let mut sizes = Resizes::new(stream);
    while let Some((width, height)) = sizes.next().await {
        if let Err(e) = crate::container::console::set_size(&master, width, height) {
            tracing::debug!(error = %e, "resizing an exec terminal");
        }
    }
}

/// What the kubelet's remotecommand server writes on the error stream: for v4 a
/// metav1.Status (Success, NonZeroExitCode with an ExitCode cause, InternalError);
/// before v4 only a failure's message.
fn render_status(protocol: &str, cmd: &[String], outcome: &Outcome) -> Vec<u8> {
    let status = match outcome {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            // Go's %v of the command and its exit error, as containerd reports it.
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {e}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": e}]},
            "code": 500,
        }),
    };
    if protocol == "v4.channel.k8s.io" {
        return status.to_string().into_bytes();
    }
    match status["status"].as_str() {
        Some("Success") => Vec::new(),
        _ => status["message"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(outcome: Outcome) -> serde_json::Value {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 7".to_string()];
        serde_json::from_slice(&render_status("v4.channel.k8s.io", &cmd, &outcome)).unwrap()
    }

    #[test]
    fn v4_status_carries_the_exit_code_as_upstream() {
        let v = v4(Ok(7));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(
            v["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 7], exit code 7"
        );
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        assert_eq!(
            v4(Ok(0)),
            serde_json::json!({"metadata": {}, "status": "Success"})
        );
        let e = v4(Err(
            "error executing command in container: no such file".into()
        ));
        assert_eq!(e["reason"], "InternalError");
        assert_eq!(e["code"], 500);
        assert_eq!(
            e["message"],
            "Internal error occurred: error executing command in container: no such file"
        );
    }

    #[test]
    fn older_protocols_get_the_message_alone() {
        assert!(render_status("v3.channel.k8s.io", &[], &Ok(0)).is_empty());
        let text = render_status("v2.channel.k8s.io", &["false".into()], &Ok(1));
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "command terminated with non-zero exit code: error executing command [false], exit code 1"
        );
    }

    #[tokio::test]
    async fn resize_messages_split_across_frames_are_parsed() {
        let (tx, rx) = mpsc::channel(4);
        let mut sizes = Resizes::new(Stream {
            id: 5,
            headers: vec![],
            incoming: rx,
        });
        tx.send(br#"{"Width":80,"Hei"#.to_vec()).await.unwrap();
        tx.send(br#"ght":24}{"Width":132,"Height":50}"#.to_vec())
            .await
            .unwrap();
        drop(tx);
        assert_eq!(sizes.next().await, Some((80, 24)));
        assert_eq!(sizes.next().await, Some((132, 50)));
        assert_eq!(sizes.next().await, None);
    }
}
