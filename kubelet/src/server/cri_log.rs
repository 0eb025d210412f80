//! The CRI container log format: one `<RFC3339Nano> <stdout|stderr> <P|F> <text>`
//! entry per file line, where `P` marks a piece of a longer line that the next
//! entries of the same stream complete.

use chrono::{DateTime, FixedOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One file line.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: DateTime<FixedOffset>,
    pub stream: Stream,
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one file line (without its newline); `None` for a line that is not CRI format.
pub fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let time = DateTime::parse_from_rfc3339(time).ok()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // Runtimes before tags existed wrote no tag; upstream treats that as a full line,
    // but every CRI v1 runtime writes one.
    let partial = match fields.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Entry {
        time,
        stream,
        partial,
        text: fields.next().unwrap_or_default(),
    })
}

/// A whole log line: partial pieces joined, stamped with its first piece's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub time: DateTime<FixedOffset>,
    pub stream: Stream,
    /// With its trailing newline.
    pub text: Vec<u8>,
}

/// Joins partial entries per stream into lines.
#[derive(Default)]
pub struct Assembler {
    stdout: Option<Line>,
    stderr: Option<Line>,
}

impl Assembler {
    /// Feeds one entry; returns a line once it is complete.
    pub fn push(&mut self, entry: Entry<'_>) -> Option<Line> {
        let pending = match entry.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let line = pending.get_or_insert_with(|| Line {
            time: entry.time,
            stream: entry.stream,
            text: Vec::new(),
        });
        line.text.extend_from_slice(entry.text);
        if entry.partial {
            return None;
        }
        let mut line = pending.take()?;
        line.text.push(b'\n');
        Some(line)
    }

    /// Every complete line in `data` (whole file lines only); returns them and how
    /// many bytes were consumed, so a caller following the file can resume after them.
    pub fn feed(&mut self, data: &[u8]) -> (Vec<Line>, usize) {
        let mut lines = Vec::new();
        let mut consumed = 0;
        while let Some(end) = data[consumed..].iter().position(|b| *b == b'\n') {
            let raw = &data[consumed..consumed + end];
            consumed += end + 1;
            match parse(raw) {
                Some(entry) => lines.extend(self.push(entry)),
                None => tracing::debug!("skipping a log line that is not in CRI format"),
            }
        }
        (lines, consumed)
    }
}

/// Go's `time.RFC3339Nano` output: fractional seconds without trailing zeros, `Z`
/// for UTC.
pub fn format_time(time: &DateTime<FixedOffset>) -> String {
    let base = time.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = time.timestamp_subsec_nanos();
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    let offset = time.offset().local_minus_utc();
    let zone = if offset == 0 {
        "Z".to_string()
    } else {
        time.format("%:z").to_string()
    };
    format!("{base}{fraction}{zone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_join_per_stream() {
        let data = b"2024-01-02T03:04:05.120000000Z stdout P hel\n\
2024-01-02T03:04:05.2Z stderr F oops\n\
2024-01-02T03:04:05.3Z stdout F lo world\n\
garbage line\n\
2024-01-02T03:04:06Z stdout F \n\
2024-01-02T03:04:07Z stdout F incomplete";
        let mut a = Assembler::default();
        let (lines, consumed) = a.feed(data);
        let texts: Vec<&[u8]> = lines.iter().map(|l| l.text.as_slice()).collect();
        assert_eq!(
            texts,
            vec![&b"oops\n"[..], &b"hello world\n"[..], &b"\n"[..]]
        );
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert_eq!(format_time(&lines[1].time), "2024-01-02T03:04:05.12Z");
        assert_eq!(format_time(&lines[2].time), "2024-01-02T03:04:06Z");
        assert_eq!(
            &data[consumed..],
            b"2024-01-02T03:04:07Z stdout F incomplete"
        );
    }

    #[test]
    fn offsets_are_kept() {
        let t = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.000000001+02:00").unwrap();
        assert_eq!(format_time(&t), "2024-01-02T03:04:05.000000001+02:00");
        assert!(parse(b"2024-01-02T03:04:05Z stdin F x").is_none());
        assert!(parse(b"yesterday stdout F x").is_none());
    }
}
