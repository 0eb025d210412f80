//! Crash-safe persistence of the pool without rewriting a file per ADD: an append-only
//! journal, one JSON object per line, each line fsync'd before the RPC answers.
//!
//! At start the journal is replayed into a [`Pool`] and compacted: the live state (current
//! assignments and releases still cooling down) is written to a new file, fsync'd and
//! renamed over the old one, so the journal's length tracks the pool, not its history.
//!
//! A crash can tear only the last line (the one being appended, never acknowledged):
//! a last line that does not parse is ignored. An unparsable line anywhere else is real
//! corruption and refuses the start, since skipping it could hand one address out twice.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::IpamError;
use super::pool::{Assignment, AttachmentKey, AttachmentMeta, Pool};

/// podcidr mode's journal; eni mode keeps its own ([`super::eni::JOURNAL_FILE`]), so a
/// node switched between modes never reads the other's addresses as its own.
pub const JOURNAL_FILE: &str = "podcidr.journal";

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    Assign {
        container_id: String,
        ifname: String,
        ip: Ipv4Addr,
        #[serde(default)]
        netns: String,
        #[serde(default)]
        pod_namespace: String,
        #[serde(default)]
        pod_name: String,
        /// Wall-clock milliseconds since the epoch.
        ts: u64,
    },
    Release {
        container_id: String,
        ifname: String,
        ip: Ipv4Addr,
        ts: u64,
    },
}

impl Record {
    pub fn assign(key: &AttachmentKey, a: &Assignment) -> Record {
        Record::Assign {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            ip: a.ip,
            netns: a.meta.netns.clone(),
            pod_namespace: a.meta.pod_namespace.clone(),
            pod_name: a.meta.pod_name.clone(),
            ts: a.assigned_at_ms,
        }
    }

    /// Applies the record to `pool` as the original operation did.
    fn apply(self, pool: &mut Pool) -> Result<(), IpamError> {
        match self {
            Record::Assign {
                container_id,
                ifname,
                ip,
                netns,
                pod_namespace,
                pod_name,
                ts,
            } => pool.insert(
                AttachmentKey {
                    container_id,
                    ifname,
                },
                Assignment {
                    ip,
                    meta: AttachmentMeta {
                        netns,
                        pod_namespace,
                        pod_name,
                    },
                    assigned_at_ms: ts,
                },
            ),
            Record::Release {
                container_id,
                ifname,
                ip,
                ts,
            } => {
                let key = AttachmentKey {
                    container_id,
                    ifname,
                };
                if pool.get(&key).is_some_and(|a| a.ip == ip) {
                    pool.remove(&key, ts);
                } else {
                    pool.note_release(ip, ts);
                }
                Ok(())
            }
        }
    }
}

/// What a replay found, for the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    pub records: usize,
    /// A torn (unparsable) last line was dropped.
    pub torn_tail: bool,
}

/// The open journal, positioned for appends.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Lines in the file: what compaction wrote plus what was appended since.
    lines: usize,
}

/// A running daemon compacts once the journal holds this many lines more than the live
/// state needs, so a long-lived node's journal stays proportional to its pods.
pub const COMPACT_SLACK: usize = 4096;

impl Journal {
    /// Replays `dir/podcidr.journal` (if any) into `pool`, compacts it, and opens it for
    /// appending. Cooldowns already over at `now_ms` are not carried into the new file.
    pub fn open(dir: &Path, pool: &mut Pool, now_ms: u64) -> Result<(Journal, Replay), IpamError> {
        Journal::open_named(dir, JOURNAL_FILE, pool, now_ms)
    }

    /// [`Journal::open`] for the journal file `name` in `dir`.
    pub fn open_named(
        dir: &Path,
        name: &str,
        pool: &mut Pool,
        now_ms: u64,
    ) -> Result<(Journal, Replay), IpamError> {
        let path = dir.join(name);
        let replay = match std::fs::read(&path) {
            Ok(bytes) => replay(&path, &bytes, pool)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Replay::default(),
            Err(e) => return Err(io_err(&path, "read", e)),
        };
        pool.expire_cooldowns(now_ms);
        let lines = compact(dir, &path, pool, now_ms)?;
        let file = open_append(&path)?;
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                path,
                file,
                lines,
            },
            replay,
        ))
    }

    /// Rewrites the journal as `pool`'s live state if it has grown [`COMPACT_SLACK`]
    /// lines beyond it; returns whether it did. Crash-safe like the start-up compaction.
    pub fn maybe_compact(&mut self, pool: &mut Pool, now_ms: u64) -> Result<bool, IpamError> {
        let live = pool.assignments().count() + pool.cooling(now_ms).count();
        if self.lines < live + COMPACT_SLACK {
            return Ok(false);
        }
        pool.expire_cooldowns(now_ms);
        self.lines = compact(&self.dir, &self.path, pool, now_ms)?;
        // The old file was renamed over; appends must go to the new one.
        self.file = open_append(&self.path)?;
        Ok(true)
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Appends one record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> Result<(), IpamError> {
        let mut line = serde_json::to_vec(record).expect("a journal record always serialises");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err(&self.path, "append to", e))?;
        self.lines += 1;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn replay(path: &Path, bytes: &[u8], pool: &mut Pool) -> Result<Replay, IpamError> {
    let mut out = Replay::default();
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The last non-empty line: either the final segment (no newline after it) or
        // the one before the empty segment that follows a final newline.
        let is_last = lines[i + 1..]
            .iter()
            .all(|l| l.iter().all(u8::is_ascii_whitespace));
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => {
                record.apply(pool)?;
                out.records += 1;
            }
            Err(_) if is_last => out.torn_tail = true,
            Err(e) => {
                return Err(IpamError::CorruptJournal {
                    path: path.to_path_buf(),
                    line: i + 1,
                    why: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn open_append(path: &Path) -> Result<File, IpamError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, "open", e))
}

/// Writes the pool's live state to a new file and renames it over the journal;
/// returns the number of lines written.
fn compact(dir: &Path, path: &Path, pool: &Pool, now_ms: u64) -> Result<usize, IpamError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut records: Vec<(AttachmentKey, Record)> = pool
        .assignments()
        .map(|(k, a)| (k.clone(), Record::assign(k, a)))
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let mut cooling: Vec<_> = pool.cooling(now_ms).collect();
    cooling.sort();
    let lines = records.len() + cooling.len();
    let mut buf = Vec::new();
    for (_, r) in &records {
        serde_json::to_writer(&mut buf, r).expect("a journal record always serialises");
        buf.push(b'\n');
    }
    for (ip, ts) in cooling {
        // The releasing attachment is forgotten; the address and time are what matter.
        let r = Record::Release {
            container_id: String::new(),
            ifname: String::new(),
            ip,
            ts,
        };
        serde_json::to_writer(&mut buf, &r).expect("a journal record always serialises");
        buf.push(b'\n');
    }
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, "write", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, "rename a compacted journal to", e))?;
    // The rename is durable only once the directory is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "fsync", e))?;
    Ok(lines)
}

fn io_err(path: &Path, op: &str, source: io::Error) -> IpamError {
    IpamError::Io {
        op: format!("{op} {}", path.display()),
        source,
    }
}
