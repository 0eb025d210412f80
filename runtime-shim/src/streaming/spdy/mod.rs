//! The SPDY/3.1 subset that Kubernetes' streaming protocols run on (what client-go's
//! spdystream speaks): the peer opens streams with SYN_STREAM, we answer SYN_REPLY,
//! both sides send DATA, FIN half-closes a stream. PING is echoed; SETTINGS and
//! WINDOW_UPDATE are accepted and ignored, as spdystream does not enforce flow control.

pub mod headers;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, mpsc};

pub use headers::Headers;
use headers::{Deflater, HeaderError, Inflater};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// Our DATA frames stay well below the 24-bit length limit.
const MAX_DATA: usize = 32 * 1024;
/// DATA frames a stream may have waiting for its consumer.
const STREAM_BACKLOG: usize = 64;
/// A peer's frame larger than this is a protocol error, not something to buffer.
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Headers(#[from] HeaderError),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One frame as read off the wire.
#[derive(Debug)]
enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY (we never open streams): ignored.
    Other,
}

async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    inflater: &mut Inflater,
) -> Result<Frame, SpdyError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(SpdyError::Protocol(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let word = |i: usize| -> Result<u32, SpdyError> {
        body.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
            .ok_or_else(|| SpdyError::Protocol("short control frame".into()))
    };
    if head[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Frame::Data {
            id,
            fin: flags & FLAG_FIN != 0,
            data: body,
        });
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(SpdyError::Protocol(format!("SPDY version {version}")));
    }
    Ok(match u16::from_be_bytes([head[2], head[3]]) {
        SYN_STREAM => {
            let id = word(0)?;
            let block = body
                .get(10..)
                .ok_or_else(|| SpdyError::Protocol("short SYN_STREAM".into()))?;
            Frame::SynStream {
                id,
                fin: flags & FLAG_FIN != 0,
                headers: inflater.decode(block)?,
            }
        }
        RST_STREAM => Frame::RstStream { id: word(0)? },
        PING => Frame::Ping { id: word(0)? },
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    })
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

struct Writer<W> {
    io: W,
    deflater: Deflater,
}

/// The sending side of a connection, shared by every stream's writer.
pub struct Sender<W> {
    inner: Arc<Mutex<Writer<W>>>,
}

impl<W> Clone for Sender<W> {
    fn clone(&self) -> Self {
        Sender {
            inner: self.inner.clone(),
        }
    }
}

impl<W: AsyncWrite + Unpin> Sender<W> {
    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut w = self.inner.lock().await;
        w.io.write_all(frame).await?;
        w.io.flush().await
    }

    /// Accepts a stream the peer opened.
    pub async fn reply(&self, id: u32) -> std::io::Result<()> {
        let mut w = self.inner.lock().await;
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&w.deflater.encode(&[]));
        let frame = control(SYN_REPLY, 0, &body);
        w.io.write_all(&frame).await?;
        w.io.flush().await
    }

    /// Sends `data` on stream `id`, in frames of at most 32 KiB; `fin` half-closes it.
    pub async fn data(&self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut chunks: Vec<&[u8]> = data.chunks(MAX_DATA).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut f = Vec::with_capacity(8 + chunk.len());
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            f.push(if fin && i == last { FLAG_FIN } else { 0 });
            f.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(chunk);
            self.send(&f).await?;
        }
        Ok(())
    }

    /// Tells the peer we are done with the connection.
    pub async fn go_away(&self) -> std::io::Result<()> {
        self.send(&control(GOAWAY, 0, &[0u8; 8])).await?;
        self.inner.lock().await.io.shutdown().await
    }
}

/// A stream the peer opened: its headers and what it sends until it half-closes.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The peer's data; `None` after its FIN (or a reset).
    pub incoming: mpsc::Receiver<Vec<u8>>,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        headers::get(&self.headers, name)
    }
}

/// Runs the read side of an upgraded connection: yields the streams the peer opens
/// (after answering each with SYN_REPLY) until the connection ends. The returned
/// [`Sender`] writes on it.
pub fn serve<T>(io: T) -> (Sender<WriteHalf<T>>, mpsc::UnboundedReceiver<Stream>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr): (ReadHalf<T>, WriteHalf<T>) = tokio::io::split(io);
    let sender = Sender {
        inner: Arc::new(Mutex::new(Writer {
            io: wr,
            deflater: Deflater::default(),
        })),
    };
    let (new_streams, streams) = mpsc::unbounded_channel();
    let tx = sender.clone();
    tokio::spawn(async move {
        let mut inflater = Inflater::default();
        let mut open: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
        loop {
            let frame = match read_frame(&mut rd, &mut inflater).await {
                Ok(f) => f,
                Err(SpdyError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY connection ended");
                    break;
                }
            };
            match frame {
                Frame::SynStream { id, fin, headers } => {
                    if tx.reply(id).await.is_err() {
                        break;
                    }
                    let (data_tx, incoming) = mpsc::channel(STREAM_BACKLOG);
                    if !fin {
                        open.insert(id, data_tx);
                    }
                    if new_streams
                        .send(Stream {
                            id,
                            headers,
                            incoming,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                Frame::Data { id, fin, data } => {
                    if let Some(s) = open.get(&id)
                        && !data.is_empty()
                    {
                        // A consumer that falls behind holds up the connection, as
                        // spdystream's does, instead of piling the peer's data up here.
                        let _ = s.send(data).await;
                    }
                    if fin {
                        open.remove(&id);
                    }
                }
                Frame::RstStream { id } => {
                    open.remove(&id);
                }
                Frame::Ping { id } => {
                    if tx.send(&control(PING, 0, &id.to_be_bytes())).await.is_err() {
                        break;
                    }
                }
                Frame::GoAway => break,
                Frame::Other => {}
            }
        }
    });
    (sender, streams)
}

#[cfg(test)]
pub mod client {
    //! The peer side, enough for tests: open streams, send and read data.
    use super::*;

    pub struct Client<T> {
        rd: ReadHalf<T>,
        wr: WriteHalf<T>,
        deflater: Deflater,
        inflater: Inflater,
        next_id: u32,
    }

    impl<T: AsyncRead + AsyncWrite> Client<T> {
        pub fn new(io: T) -> Self {
            let (rd, wr) = tokio::io::split(io);
            Client {
                rd,
                wr,
                deflater: Deflater::default(),
                inflater: Inflater::default(),
                next_id: 1,
            }
        }

        pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
            let id = self.next_id;
            self.next_id += 2;
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            body.extend_from_slice(&self.deflater.encode(headers));
            self.wr
                .write_all(&control(SYN_STREAM, 0, &body))
                .await
                .unwrap();
            id
        }

        pub async fn send(&mut self, id: u32, data: &[u8], fin: bool) {
            let mut f = id.to_be_bytes().to_vec();
            f.push(if fin { FLAG_FIN } else { 0 });
            f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(data);
            self.wr.write_all(&f).await.unwrap();
        }

        /// The next DATA frame: (stream, fin, bytes); `None` at the end of the connection.
        pub async fn next_data(&mut self) -> Option<(u32, bool, Vec<u8>)> {
            loop {
                match read_frame(&mut self.rd, &mut self.inflater).await.ok()? {
                    Frame::Data { id, fin, data } => return Some((id, fin, data)),
                    Frame::GoAway => return None,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::Client;
    use super::*;

    /// A client's SYN_STREAM for stream 1 with headers streamtype=error, requestid=0, as
    /// laid out in SPDY/3 section 2.6.1; its header block was compressed by C zlib
    /// (level 9, sync flush) with the section 2.6.10.1 dictionary: `78 f9` is a zlib
    /// header with FDICT set, `e3 c6 a7 c2` the dictionary's Adler-32.
    const SYN_STREAM_1: &str = "80030001000000330000000100000000000078f9e3c6a7c202e50e703a2b294a4dcc\
                                851625aca9a0800632388b20d196094ace8c0600000000ffff";

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    async fn read_exactly(r: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        r.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn frames_match_the_spdy3_wire_format() {
        let (a, mut peer) = tokio::io::duplex(1 << 16);
        let (sender, mut streams) = serve(a);
        let syn = unhex(SYN_STREAM_1);
        assert_eq!(
            syn.len(),
            8 + 0x33,
            "length field covers everything after the head"
        );
        peer.write_all(&syn).await.unwrap();
        let s = streams.recv().await.unwrap();
        assert_eq!(s.id, 1);
        assert_eq!(
            s.headers,
            vec![
                ("streamtype".to_string(), "error".to_string()),
                ("requestid".to_string(), "0".to_string())
            ]
        );
        // SYN_REPLY: control bit, version 3, type 2, no flags, then stream 1 and a
        // compressed block of zero headers that an independent inflater reads.
        let head = read_exactly(&mut peer, 8).await;
        assert_eq!(&head[..5], &[0x80, 0x03, 0x00, 0x02, 0x00]);
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let body = read_exactly(&mut peer, len).await;
        assert_eq!(&body[..4], &[0, 0, 0, 1]);
        assert_eq!(
            &body[4..6],
            &[0x78, 0xbb],
            "zlib header with FDICT at default level"
        );
        assert_eq!(&body[6..10], &[0xe3, 0xc6, 0xa7, 0xc2]);
        assert!(Inflater::default().decode(&body[4..]).unwrap().is_empty());
        // DATA: stream id without the control bit, FIN flag, 24-bit length, payload.
        sender.data(1, b"hi", true).await.unwrap();
        assert_eq!(
            read_exactly(&mut peer, 10).await,
            unhex("00000001 01 000002 6869")
        );
        // PING comes back unchanged.
        let ping = unhex("80030006 00 000004 00000007");
        peer.write_all(&ping).await.unwrap();
        assert_eq!(read_exactly(&mut peer, ping.len()).await, ping);
    }

    #[tokio::test]
    async fn streams_open_carry_data_both_ways_and_half_close() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (sender, mut streams) = serve(a);
        let mut c = Client::new(b);
        let id = c.open(&[("streamType", "stdin"), ("requestID", "0")]).await;
        let mut s = streams.recv().await.unwrap();
        assert_eq!((s.id, s.header("streamtype")), (id, Some("stdin")));
        c.send(id, b"hello", false).await;
        c.send(id, b"", true).await;
        assert_eq!(s.incoming.recv().await.unwrap(), b"hello");
        assert!(s.incoming.recv().await.is_none(), "FIN closes the stream");
        let big = vec![7u8; 100_000];
        // More than the pipe holds: sent while the peer reads.
        let send = tokio::spawn({
            let (sender, big) = (sender.clone(), big.clone());
            async move { sender.data(id, &big, true).await.unwrap() }
        });
        let mut got = Vec::new();
        loop {
            let (sid, fin, data) = c.next_data().await.unwrap();
            assert_eq!(sid, id);
            got.extend(data);
            if fin {
                break;
            }
        }
        assert_eq!(got, big);
        send.await.unwrap();
        sender.go_away().await.unwrap();
        assert!(c.next_data().await.is_none());
    }
}
