//! SPDY/3 header blocks: `count, (name, value)*` with 32-bit lengths, compressed with
//! one zlib stream per direction for the whole connection, preset with the dictionary
//! of the SPDY/3 draft (section 2.6.10.1).

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Header names arrive lower-cased (SPDY requires it); values may hold several
/// NUL-separated entries, kept as one string here.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (names compare lower-case).
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The SPDY/3 zlib dictionary: length-prefixed common header names and values, then
/// a run of common status codes, dates and content types.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410\
            411412413414415416417502504505203 Non-Authoritative Information204 No Content\
            301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found\
            500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr \
            May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
            chunked,text/html,image/png,image/jpg,image/gif,application/xml,\
            application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=\
            gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("corrupt compressed header block: {0}")]
    Inflate(String),
    #[error("malformed header block")]
    Malformed,
}

/// Decompresses the peer's header blocks.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Inflater(Decompress::new(true))
    }
}

impl Inflater {
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before = self.0.total_in();
            let result = self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.0.total_in() - before) as usize..];
            match result {
                Ok(Status::Ok | Status::BufError)
                    if input.is_empty() && out.len() < out.capacity() =>
                {
                    break;
                }
                Ok(Status::StreamEnd) => break,
                Ok(_) => out.reserve(out.capacity().max(256)),
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| HeaderError::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(HeaderError::Inflate(e.to_string())),
            }
        }
        parse(&out)
    }
}

/// Compresses our header blocks.
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(dictionary())
            .expect("a fresh compressor accepts a dictionary");
        Deflater(c)
    }
}

impl Deflater {
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let raw = serialize(headers);
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            let before = self.0.total_in();
            self.0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            input = &input[(self.0.total_in() - before) as usize..];
            // A sync flush is complete once it left room in the output buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

fn serialize(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (headers.len() as u32).to_be_bytes().to_vec();
    for (n, v) in headers {
        for s in [n.to_ascii_lowercase().as_str(), v] {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

fn parse(mut b: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if b.len() < n {
            return Err(HeaderError::Malformed);
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn u32_at(b: &mut &[u8]) -> Result<usize, HeaderError> {
        let v = take(b, 4)?;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    }
    let count = u32_at(&mut b)?;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = u32_at(&mut b)?;
        let name = String::from_utf8_lossy(take(&mut b, n)?).to_ascii_lowercase();
        let n = u32_at(&mut b)?;
        let value = String::from_utf8_lossy(take(&mut b, n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_one_of_the_spdy3_draft() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // zlib names a preset dictionary by its Adler-32: a peer refuses any other.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_across_one_stream_per_direction() {
        let (mut tx, mut rx) = (Deflater::default(), Inflater::default());
        for i in 0..3 {
            let port = i.to_string();
            let block = tx.encode(&[("StreamType", "data"), ("port", &port)]);
            let h = rx.decode(&block).unwrap();
            assert_eq!(get(&h, "streamtype"), Some("data"));
            assert_eq!(get(&h, "port"), Some(port.as_str()));
        }
        assert!(Inflater::default().decode(b"garbage").is_err());
    }
}
