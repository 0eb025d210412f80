//! Attach over remotecommand: the container's monitor serves its stdio on the attach
//! socket (see [`crate::container::attach`]); this relays the socket's output frames to
//! the client's stdout/stderr streams and the client's stdin and resize streams into
//! it. The session ends when the container exits (the monitor closes the socket).

use std::sync::Arc;

use k8s_cri::v1::AttachRequest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Mutex;

use super::remotecommand::{Resizes, Streams};
use super::spdy::Sender;
use crate::container::attach::{self, frame};
use crate::runtime::Runtime;

pub async fn run<W: AsyncWrite + Unpin + Send + 'static>(
    runtime: &Runtime,
    req: &AttachRequest,
    streams: &mut Streams,
    tx: &Sender<W>,
) -> Result<(), String> {
    let conn = runtime
        .attach(&req.container_id)
        .await
        .map_err(|e| e.to_string())?;
    let (mut rd, wr) = conn.into_split();
    let wr = Arc::new(Mutex::new(wr));
    if let Some(mut stdin) = streams.stdin.take() {
        let wr = wr.clone();
        tokio::spawn(async move {
            while let Some(data) = stdin.incoming.recv().await {
                if send(&wr, attach::STDIN, &data).await.is_err() {
                    return;
                }
            }
            let _ = send(&wr, attach::STDIN_CLOSE, &[]).await;
        });
    }
    if let Some(resize) = streams.resize.take() {
        let wr = wr.clone();
        tokio::spawn(async move {
            let mut sizes = Resizes::new(resize);
            while let Some((width, height)) = sizes.next().await {
                let mut size = width.to_be_bytes().to_vec();
                size.extend_from_slice(&height.to_be_bytes());
                if send(&wr, attach::RESIZE, &size).await.is_err() {
                    return;
                }
            }
        });
    }
    let stdout = streams.stdout.as_ref().map(|s| s.id);
    let stderr = streams.stderr.as_ref().map(|s| s.id);
    while let Some((kind, payload)) = next_frame(&mut rd).await.map_err(|e| e.to_string())? {
        let target = match kind {
            attach::STDOUT => stdout,
            attach::STDERR => stderr,
            _ => None,
        };
        if let Some(id) = target
            && tx.data(id, &payload, false).await.is_err()
        {
            // The client is gone.
            return Ok(());
        }
    }
    for id in [stdout, stderr].into_iter().flatten() {
        let _ = tx.data(id, &[], true).await;
    }
    Ok(())
}

async fn send(wr: &Mutex<OwnedWriteHalf>, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    wr.lock().await.write_all(&frame(kind, payload)).await
}

async fn next_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    };
    let (kind, len) = attach::parse_head(head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}
