//! IP address management for pods, kept in a [`pool::Pool`] and persisted in an
//! append-only [`journal::Journal`] under the state directory. `podcidr` mode: addresses
//! come from one CIDR (the Node's `spec.podCIDR` or `--pod-cidr`); `eni` mode
//! ([`eni::EniIpam`]): from the secondary IPs EC2 assigned to the instance's ENIs.

pub mod deferred;
pub mod eni;
pub mod journal;
pub mod pool;
pub mod warm;

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

pub use journal::{Journal, Record, Replay};
pub use pool::{Assignment, AttachmentKey, AttachmentMeta, COOLDOWN_MS, Pool, PoolStats};

pub const LOCK_FILE: &str = "ipamd.lock";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid pod CIDR: {0}")]
    InvalidCidr(String),

    #[error(
        "no free IP in {pool}: {assigned} assigned, {cooldown} released less than {cooldown_s}s ago"
    )]
    Exhausted {
        pool: String,
        assigned: u32,
        cooldown: u32,
        cooldown_s: u64,
    },

    #[error("{ip} is already assigned to container {} ifname {}", owner.container_id, owner.ifname)]
    Conflict { ip: Ipv4Addr, owner: AttachmentKey },

    #[error("cannot {op}: {source}")]
    Io { op: String, source: io::Error },

    #[error("journal {} is corrupt at line {line}: {why}; move it away to start with an empty pool (pods holding IPs must then be recreated)", path.display())]
    CorruptJournal {
        path: PathBuf,
        line: usize,
        why: String,
    },

    #[error("another ipamd holds {}; only one daemon may own a state directory", path.display())]
    Locked { path: PathBuf },
}

/// Wall-clock milliseconds since the epoch: cooldowns must survive restarts, so they are
/// measured on the clock that does.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The ADD both modes share: the address `key` holds (`true`), or a new one from
/// `pool`, on disk before this returns.
pub(crate) fn journaled_add(
    pool: &mut Pool,
    journal: &mut Journal,
    key: AttachmentKey,
    meta: AttachmentMeta,
    now_ms: u64,
) -> Result<(Ipv4Addr, bool), IpamError> {
    journaled_add_picking(pool, journal, key, meta, now_ms, |p| p.pick(now_ms))
}

/// [`journaled_add`] with the new address chosen by `pick` (eni mode packs prefixes).
pub(crate) fn journaled_add_picking(
    pool: &mut Pool,
    journal: &mut Journal,
    key: AttachmentKey,
    meta: AttachmentMeta,
    now_ms: u64,
    pick: impl FnOnce(&Pool) -> Result<Ipv4Addr, IpamError>,
) -> Result<(Ipv4Addr, bool), IpamError> {
    if let Some(a) = pool.get(&key) {
        return Ok((a.ip, true));
    }
    let ip = pick(pool)?;
    let a = Assignment {
        ip,
        meta,
        assigned_at_ms: now_ms,
    };
    // Journal first: an assignment the pool knows but the disk does not could be
    // handed out twice after a crash.
    journal.append(&Record::assign(&key, &a))?;
    pool.insert(key, a)?;
    compact_if_needed(pool, journal, now_ms);
    Ok((ip, false))
}

/// The DEL both modes share: releases `key`'s address into cooldown; `None` if it held
/// none.
pub(crate) fn journaled_del(
    pool: &mut Pool,
    journal: &mut Journal,
    key: &AttachmentKey,
    now_ms: u64,
) -> Result<Option<Ipv4Addr>, IpamError> {
    let Some(a) = pool.get(key) else {
        return Ok(None);
    };
    journal.append(&Record::Release {
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
        ip: a.ip,
        ts: now_ms,
    })?;
    let released = pool.remove(key, now_ms).map(|a| a.ip);
    compact_if_needed(pool, journal, now_ms);
    Ok(released)
}

/// The change is already on disk; a failed compaction only leaves a longer journal
/// (the old file stays in place until the rename), so it is logged, not returned.
fn compact_if_needed(pool: &mut Pool, journal: &mut Journal, now_ms: u64) {
    match journal.maybe_compact(pool, now_ms) {
        Ok(true) => tracing::info!(lines = journal.lines(), "journal compacted"),
        Ok(false) => {}
        Err(e) => tracing::warn!("journal compaction failed, will retry: {e}"),
    }
}

/// Creates `state_dir` and takes its lock: one daemon per state directory, whatever
/// its mode. The lock lasts as long as the returned file.
pub fn lock_state_dir(state_dir: &Path) -> Result<Flock<File>, IpamError> {
    std::fs::create_dir_all(state_dir).map_err(|source| IpamError::Io {
        op: format!("create {}", state_dir.display()),
        source,
    })?;
    let lock_path = state_dir.join(LOCK_FILE);
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| IpamError::Io {
            op: format!("open {}", lock_path.display()),
            source,
        })?;
    Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| IpamError::Locked { path: lock_path })
}

/// An attachment's address as an ADD hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub ip: Ipv4Addr,
    /// The route table pod traffic from `ip` must use; 0 = no policy rules.
    pub route_table: u32,
    /// The attachment held `ip` before the call (a repeated ADD).
    pub existing: bool,
    /// What the from-pod rule to `route_table` covers; empty: everything.
    pub rule_destinations: Vec<Ipv4Net>,
}

/// The podcidr allocator: pool + journal, owning its state directory through a lock.
#[derive(Debug)]
pub struct PodCidrIpam {
    cidr: Ipv4Net,
    pool: Pool,
    journal: Journal,
    _lock: Flock<File>,
}

impl PodCidrIpam {
    /// Takes the state directory's lock, replays and compacts the journal.
    pub fn open(cidr: Ipv4Net, state_dir: &Path, now_ms: u64) -> Result<(Self, Replay), IpamError> {
        let mut pool = Pool::new(cidr)?;
        let lock = lock_state_dir(state_dir)?;
        let (journal, replay) = Journal::open(state_dir, &mut pool, now_ms)?;
        Ok((
            PodCidrIpam {
                cidr: cidr.trunc(),
                pool,
                journal,
                _lock: lock,
            },
            replay,
        ))
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Assigns an address to `key`, or returns the one it holds (`true` = existing).
    /// The assignment is on disk before this returns.
    pub fn add(
        &mut self,
        key: AttachmentKey,
        meta: AttachmentMeta,
        now_ms: u64,
    ) -> Result<(Ipv4Addr, bool), IpamError> {
        journaled_add(&mut self.pool, &mut self.journal, key, meta, now_ms)
    }

    /// Releases `key`'s address (into cooldown); `None` if it held none.
    pub fn del(&mut self, key: &AttachmentKey, now_ms: u64) -> Result<Option<Ipv4Addr>, IpamError> {
        journaled_del(&mut self.pool, &mut self.journal, key, now_ms)
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn stats(&self, now_ms: u64) -> PoolStats {
        self.pool.stats(now_ms)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey::eth0(c)
    }

    fn meta(name: &str) -> AttachmentMeta {
        AttachmentMeta {
            netns: format!("/var/run/netns/{name}"),
            pod_namespace: "default".into(),
            pod_name: name.into(),
        }
    }

    fn cidr() -> Ipv4Net {
        "10.9.0.0/24".parse().unwrap()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 9, 0, last)
    }

    #[test]
    fn allocates_in_order_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, replay) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
        assert_eq!(replay, Replay::default());
        assert_eq!(ipam.add(key("a"), meta("a"), 1).unwrap(), (ip(2), false));
        assert_eq!(ipam.add(key("b"), meta("b"), 1).unwrap(), (ip(3), false));
        assert_eq!(ipam.add(key("a"), meta("a"), 2).unwrap(), (ip(2), true));
        // Another interface of the same container is another attachment.
        let a_net1 = AttachmentKey {
            container_id: "a".into(),
            ifname: "net1".into(),
        };
        assert_eq!(ipam.add(a_net1, meta("a"), 2).unwrap(), (ip(4), false));
        let s = ipam.stats(2);
        assert_eq!((s.free, s.assigned, s.cooldown), (250, 3, 0));
    }

    #[test]
    fn release_cools_down_and_del_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
        ipam.add(key("a"), meta("a"), 0).unwrap();
        assert_eq!(ipam.del(&key("a"), 100).unwrap(), Some(ip(2)));
        assert_eq!(ipam.del(&key("a"), 100).unwrap(), None);
        assert_eq!(ipam.del(&key("never"), 100).unwrap(), None);
        assert_eq!(ipam.add(key("b"), meta("b"), 200).unwrap().0, ip(3));
        assert_eq!(
            ipam.add(key("c"), meta("c"), 100 + COOLDOWN_MS).unwrap().0,
            ip(2)
        );
    }

    #[test]
    fn exhaustion_is_an_error_that_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) =
            PodCidrIpam::open("10.9.0.0/29".parse().unwrap(), dir.path(), 0).unwrap();
        for i in 0..5 {
            ipam.add(key(&format!("c{i}")), meta("x"), 0).unwrap();
        }
        let e = ipam.add(key("late"), meta("late"), 0).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("no free IP"), "{e}");
        assert_eq!(ipam.stats(0).assigned, 5);
        // A repeated ADD of a holder still works when the pool is full.
        assert_eq!(ipam.add(key("c0"), meta("x"), 0).unwrap(), (ip(2), true));
    }

    #[test]
    fn replays_after_a_crash_and_keeps_cooldowns() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut ipam, _) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
            ipam.add(key("a"), meta("a"), 10).unwrap();
            ipam.add(key("b"), meta("b"), 10).unwrap();
            ipam.add(key("c"), meta("c"), 10).unwrap();
            ipam.del(&key("b"), 1_000).unwrap();
            // Dropped without any shutdown: all that survives is what was appended.
        }
        let (mut ipam, replay) = PodCidrIpam::open(cidr(), dir.path(), 2_000).unwrap();
        assert_eq!(replay.records, 4);
        assert!(!replay.torn_tail);
        assert_eq!(ipam.pool().get(&key("a")).unwrap().ip, ip(2));
        assert_eq!(ipam.pool().get(&key("a")).unwrap().meta, meta("a"));
        assert_eq!(ipam.pool().get(&key("c")).unwrap().ip, ip(4));
        assert!(ipam.pool().get(&key("b")).is_none());
        // .3 is still cooling down, so a new pod gets .5.
        assert_eq!(ipam.add(key("d"), meta("d"), 2_000).unwrap().0, ip(5));
        drop(ipam);

        // The compacted journal holds the live state only: 3 assignments + 1 cooldown.
        let text = std::fs::read_to_string(dir.path().join(journal::JOURNAL_FILE)).unwrap();
        let (ipam, replay) = PodCidrIpam::open(cidr(), dir.path(), 3_000).unwrap();
        assert_eq!(replay.records, 4, "{text}");
        assert_eq!(ipam.stats(3_000).cooldown, 1);
        drop(ipam);
        // Once the cooldown is over, compaction forgets the release.
        let (mut ipam, _) = PodCidrIpam::open(cidr(), dir.path(), 1_000 + COOLDOWN_MS).unwrap();
        assert_eq!(ipam.stats(1_000 + COOLDOWN_MS).cooldown, 0);
        assert_eq!(
            ipam.add(key("e"), meta("e"), 1_000 + COOLDOWN_MS)
                .unwrap()
                .0,
            ip(3)
        );
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut ipam, _) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
            ipam.add(key("a"), meta("a"), 0).unwrap();
        }
        let path = dir.path().join(journal::JOURNAL_FILE);
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(br#"{"op":"assign","container_id":"b","ifname":"eth0","ip":"10.9"#)
            .unwrap();
        drop(f);
        let (mut ipam, replay) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
        assert_eq!(replay.records, 1);
        assert!(replay.torn_tail);
        assert!(ipam.pool().get(&key("b")).is_none());
        // Compaction removed the torn line, so later appends start on a clean line.
        ipam.add(key("c"), meta("c"), 0).unwrap();
        drop(ipam);
        let (ipam, replay) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
        assert!(!replay.torn_tail);
        assert_eq!(ipam.pool().get(&key("c")).unwrap().ip, ip(3));
    }

    #[test]
    fn corruption_before_the_last_line_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(journal::JOURNAL_FILE);
        std::fs::write(
            &path,
            "garbage\n{\"op\":\"release\",\"container_id\":\"\",\"ifname\":\"\",\"ip\":\"10.9.0.2\",\"ts\":0}\n",
        )
        .unwrap();
        let e = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap_err();
        assert!(
            matches!(e, IpamError::CorruptJournal { line: 1, .. }),
            "{e}"
        );
        // Nothing was compacted away.
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("garbage")
        );
    }

    #[test]
    fn a_running_journal_is_compacted_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
        ipam.add(key("keep"), meta("keep"), 0).unwrap();
        // Add/del cycles far apart in time, so releases do not stay cooling down.
        let mut now = 0;
        for i in 0..journal::COMPACT_SLACK {
            now += COOLDOWN_MS;
            let k = key(&format!("c{i}"));
            ipam.add(k.clone(), meta("x"), now).unwrap();
            ipam.del(&k, now).unwrap();
        }
        // 1 + 2 * COMPACT_SLACK lines were appended; compaction kept the file within
        // the slack of the live state (one assignment, one cooling release).
        let lines = ipam.journal().lines();
        assert!(lines <= journal::COMPACT_SLACK + 2, "{lines} lines");
        let text = std::fs::read_to_string(dir.path().join(journal::JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), lines);
        drop(ipam);
        // The compacted, then appended-to journal replays to the same state.
        let (ipam, replay) = PodCidrIpam::open(cidr(), dir.path(), now).unwrap();
        assert_eq!(replay.records, lines);
        assert_eq!(ipam.pool().get(&key("keep")).unwrap().ip, ip(2));
        assert_eq!(ipam.stats(now).assigned, 1);
    }

    #[test]
    fn one_daemon_per_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let _first = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap();
        let e = PodCidrIpam::open(cidr(), dir.path(), 0).unwrap_err();
        assert!(matches!(e, IpamError::Locked { .. }), "{e}");
    }
}
