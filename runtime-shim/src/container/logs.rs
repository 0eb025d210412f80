//! CRI log files: every line is `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`, with
//! `P` marking a partial line that continues in the next record (long lines are split so
//! that one runaway line cannot make a record unbounded), as kubelets and
//! `kubectl logs` expect.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest text in one record, like containerd's default.
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub struct LogWriter {
    path: PathBuf,
    file: File,
}

impl LogWriter {
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// After a log rotation moved the file away (ReopenContainerLog).
    pub fn reopen(&mut self) -> io::Result<()> {
        *self = LogWriter::open(&self.path)?;
        Ok(())
    }

    /// Writes one record; `complete` is false for a chunk of a longer line.
    pub fn record(&mut self, stream: Stream, text: &[u8], complete: bool) -> io::Result<()> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(now.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.extend_from_slice(if complete { b" F " } else { b" P " });
        line.extend_from_slice(text);
        line.push(b'\n');
        // One write per record, so concurrent stdout/stderr records never interleave.
        self.file.write_all(&line)
    }
}

/// Splits a stream into records: complete lines, and partial records for lines longer
/// than [`MAX_RECORD`] or cut off at EOF.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit(text, complete)` for each record that is ready.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        emit: &mut dyn FnMut(&[u8], bool) -> io::Result<()>,
    ) -> io::Result<()> {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&data[..i]);
                    self.flush_long(emit)?;
                    emit(&self.pending, true)?;
                    self.pending.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(data);
                    self.flush_long(emit)?;
                    data = &[];
                }
            }
        }
        Ok(())
    }

    fn flush_long(
        &mut self,
        emit: &mut dyn FnMut(&[u8], bool) -> io::Result<()>,
    ) -> io::Result<()> {
        while self.pending.len() > MAX_RECORD {
            emit(&self.pending[..MAX_RECORD], false)?;
            self.pending.drain(..MAX_RECORD);
        }
        Ok(())
    }

    /// At EOF: whatever is left is a partial line.
    pub fn finish(
        &mut self,
        emit: &mut dyn FnMut(&[u8], bool) -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.pending.is_empty() {
            emit(&self.pending, false)?;
            self.pending.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut out = vec![];
        let mut s = LineSplitter::default();
        let mut emit = |t: &[u8], c: bool| {
            out.push((t.to_vec(), c));
            Ok(())
        };
        for c in chunks {
            s.feed(c, &mut emit).unwrap();
        }
        s.finish(&mut emit).unwrap();
        out
    }

    #[test]
    fn lines_across_chunks_and_long_lines() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n"]),
            vec![(b"hello".to_vec(), true), (b"world".to_vec(), true)]
        );
        assert_eq!(
            split(&[b"no newline"]),
            vec![(b"no newline".to_vec(), false)]
        );
        let long = vec![b'x'; MAX_RECORD + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input]);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0.len(), out[0].1), (MAX_RECORD, false));
        assert_eq!((out[1].0.len(), out[1].1), (10, true));
    }

    #[test]
    fn records_have_the_cri_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.record(Stream::Stdout, b"hello", true).unwrap();
        w.record(Stream::Stderr, b"par", false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let (ts, rest) = lines[0].split_once(' ').unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(rest, "stdout F hello");
        assert!(lines[1].ends_with(" stderr P par"));
    }
}
