//! The eni-mode allocator: the instance's ENIs and the secondary IPs and /28 prefixes
//! EC2 lists on them, the assignments (a [`Pool`] over exactly those addresses: each
//! secondary IP, and every address of every prefix), and the journal that makes them
//! survive a crash. No EC2 calls here: the reconcile loop ([`crate::eni`]) tells it what
//! EC2 says with [`EniIpam::sync_eni`], and an ADD only ever picks an address that EC2
//! listed on a set-up ENI of this instance. Prefixes are not journaled: EC2 lists them
//! again after a restart, and the journaled assignments keep their addresses in them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use nix::fcntl::Flock;

use super::warm::EniUsage;
use super::{
    Added, AttachmentKey, AttachmentMeta, IpamError, Journal, PoolStats, Replay,
    journaled_add_picking, journaled_del, lock_state_dir,
};
use crate::ipam::Pool;

/// eni mode's journal, next to (never mixed with) podcidr mode's.
pub const JOURNAL_FILE: &str = "eni.journal";

/// The kernel's main routing table: pods on the primary ENI use it, as aws-node's do.
pub const MAIN_TABLE: u32 = 254;

/// The route table of the ENI at `device_index`, as aws-node numbers them.
pub fn route_table(device_index: u32) -> u32 {
    if device_index == 0 {
        MAIN_TABLE
    } else {
        device_index + 1
    }
}

/// One attached ENI whose interface is set up, and the addresses of it the pool uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniSlot {
    pub id: String,
    pub device_index: u32,
    /// Never given to a pod: it is the ENI's own address.
    pub primary_ip: Ipv4Addr,
    /// The secondary IPs the pool uses.
    pub ips: BTreeSet<Ipv4Addr>,
    /// The /28 prefixes EC2 lists on it.
    pub prefixes: BTreeSet<Ipv4Net>,
    /// Every address of it in the pool: `ips` and the prefixes' addresses.
    pub addresses: BTreeSet<Ipv4Addr>,
}

/// Every address of a prefix: all of a delegated /28 is the ENI's, network and
/// broadcast addresses included.
pub fn prefix_addresses(p: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    (u32::from(p.network())..=u32::from(p.broadcast())).map(Ipv4Addr::from)
}

/// What [`EniIpam::sync_eni`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Secondary IPs that joined the pool.
    pub added: Vec<Ipv4Addr>,
    /// Free secondary IPs EC2 no longer lists: no longer handed out.
    pub dropped: Vec<Ipv4Addr>,
    /// Prefixes whose addresses joined the pool, or left it (the free ones).
    pub added_prefixes: Vec<Ipv4Net>,
    pub dropped_prefixes: Vec<Ipv4Net>,
    /// Assigned addresses EC2 no longer lists: their pods keep them (we cannot take an address
    /// back from a running pod) but their traffic will not flow; an operator must act.
    pub orphaned: Vec<(AttachmentKey, Ipv4Addr)>,
    /// Addresses EC2 lists on this ENI that another ENI already holds (the emulator can
    /// do that; AWS never does), or twice on this one: not used twice.
    pub duplicates: Vec<Ipv4Addr>,
}

#[derive(Debug)]
pub struct EniIpam {
    pool: Pool,
    journal: Journal,
    enis: BTreeMap<String, EniSlot>,
    _lock: Flock<File>,
}

impl EniIpam {
    /// Takes the state directory's lock and replays the journal. The pool starts with no
    /// usable IPs: only what EC2 lists (through [`EniIpam::sync_eni`]) can be handed out,
    /// while the replayed assignments keep their IPs.
    pub fn open(
        state_dir: &Path,
        cooldown_ms: u64,
        now_ms: u64,
    ) -> Result<(Self, Replay), IpamError> {
        let mut pool = Pool::of_addresses().with_cooldown_ms(cooldown_ms);
        let lock = lock_state_dir(state_dir)?;
        let (journal, replay) = Journal::open_named(state_dir, JOURNAL_FILE, &mut pool, now_ms)?;
        Ok((
            EniIpam {
                pool,
                journal,
                enis: BTreeMap::new(),
                _lock: lock,
            },
            replay,
        ))
    }

    /// Whether ENI `id`'s IPs are in the pool.
    pub fn has_eni(&self, id: &str) -> bool {
        self.enis.contains_key(id)
    }

    /// The ENI holding `ip`, if one does.
    fn eni_of(&self, ip: Ipv4Addr) -> Option<&EniSlot> {
        self.enis.values().find(|e| e.addresses.contains(&ip))
    }

    /// Assigns an IP to `key` (or returns the one it holds), on disk before this returns.
    pub fn add(
        &mut self,
        key: AttachmentKey,
        meta: AttachmentMeta,
        now_ms: u64,
    ) -> Result<Added, IpamError> {
        let enis = &self.enis;
        let (ip, existing) = journaled_add_picking(
            &mut self.pool,
            &mut self.journal,
            key,
            meta,
            now_ms,
            |pool| pick_packed(enis, pool, now_ms),
        )?;
        // An IP no ENI holds any more can only be a replayed one EC2 dropped: its pod's
        // rules are in the main table's hands.
        let route_table = self
            .eni_of(ip)
            .map_or(MAIN_TABLE, |e| route_table(e.device_index));
        Ok(Added {
            ip,
            route_table,
            existing,
            rule_destinations: Vec::new(),
        })
    }

    /// Releases `key`'s IP into cooldown; `None` if it held none.
    pub fn del(&mut self, key: &AttachmentKey, now_ms: u64) -> Result<Option<Ipv4Addr>, IpamError> {
        journaled_del(&mut self.pool, &mut self.journal, key, now_ms)
    }

    /// Makes the pool's view of ENI `id` what EC2 says: `ips` are the secondary IPs
    /// and `prefixes` the /28s EC2 lists on it (the ENI's primary and AWS-reserved
    /// addresses already left out).
    pub fn sync_eni(
        &mut self,
        id: &str,
        device_index: u32,
        primary_ip: Ipv4Addr,
        ips: &BTreeSet<Ipv4Addr>,
        prefixes: &BTreeSet<Ipv4Net>,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let taken: HashSet<Ipv4Addr> = self
            .enis
            .values()
            .filter(|e| e.id != id)
            .flat_map(|e| e.addresses.iter().copied())
            .collect();
        let slot = self.enis.entry(id.to_string()).or_insert_with(|| EniSlot {
            id: id.to_string(),
            device_index,
            primary_ip,
            ips: BTreeSet::new(),
            prefixes: BTreeSet::new(),
            addresses: BTreeSet::new(),
        });
        slot.device_index = device_index;
        slot.primary_ip = primary_ip;
        // What EC2 lists that can be this ENI's, secondary IPs first.
        let mut want: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let listed = ips
            .iter()
            .copied()
            .chain(prefixes.iter().flat_map(|p| prefix_addresses(*p)));
        for ip in listed {
            if taken.contains(&ip) || ip == primary_ip || !want.insert(ip) {
                report.duplicates.push(ip);
            }
        }
        let want_ips: BTreeSet<Ipv4Addr> = ips.intersection(&want).copied().collect();
        let gone: Vec<Ipv4Addr> = slot.addresses.difference(&want).copied().collect();
        for ip in gone {
            slot.addresses.remove(&ip);
            self.pool.remove_address(ip);
            match self.pool.holder(ip) {
                Some(key) => report.orphaned.push((key.clone(), ip)),
                None if slot.ips.contains(&ip) => report.dropped.push(ip),
                None => {}
            }
        }
        for ip in &want {
            if slot.addresses.insert(*ip) {
                self.pool.add_address(*ip);
                if want_ips.contains(ip) {
                    report.added.push(*ip);
                }
            }
        }
        report.added_prefixes = prefixes.difference(&slot.prefixes).copied().collect();
        report.dropped_prefixes = slot.prefixes.difference(prefixes).copied().collect();
        slot.ips = want_ips;
        slot.prefixes = prefixes.clone();
        report
    }

    /// Forgets every ENI not in `attached` (detached behind our back, or freed); returns
    /// the reports for their addresses, as [`EniIpam::sync_eni`] with none would.
    pub fn retain_enis(&mut self, attached: &HashSet<&str>) -> Vec<(String, SyncReport)> {
        let gone: Vec<(String, u32, Ipv4Addr)> = self
            .enis
            .values()
            .filter(|e| !attached.contains(e.id.as_str()))
            .map(|e| (e.id.clone(), e.device_index, e.primary_ip))
            .collect();
        gone.into_iter()
            .map(|(id, idx, primary)| {
                let report = self.sync_eni(&id, idx, primary, &BTreeSet::new(), &BTreeSet::new());
                self.enis.remove(&id);
                (id, report)
            })
            .collect()
    }

    /// Takes up to `count` of ENI `id`'s available secondary IPs out of the pool (so no
    /// ADD can get them) and returns them, to be unassigned through EC2. Highest first.
    pub fn take_free(&mut self, id: &str, count: u32, now_ms: u64) -> Vec<Ipv4Addr> {
        let Some(slot) = self.enis.get_mut(id) else {
            return Vec::new();
        };
        let pool = &mut self.pool;
        let taken: Vec<Ipv4Addr> = slot
            .ips
            .iter()
            .rev()
            .copied()
            .filter(|ip| pool.is_available(*ip, now_ms))
            .take(count as usize)
            .collect();
        for ip in &taken {
            slot.ips.remove(ip);
            slot.addresses.remove(ip);
            pool.remove_address(*ip);
        }
        taken
    }

    /// Takes up to `count` of ENI `id`'s prefixes none of whose addresses is assigned or
    /// cooling down out of the pool, and returns them, to be unassigned through EC2.
    /// Highest first.
    pub fn take_prefixes(&mut self, id: &str, count: u32, now_ms: u64) -> Vec<Ipv4Net> {
        let Some(slot) = self.enis.get_mut(id) else {
            return Vec::new();
        };
        let pool = &mut self.pool;
        let taken: Vec<Ipv4Net> = slot
            .prefixes
            .iter()
            .rev()
            .copied()
            .filter(|p| prefix_free(pool, &slot.addresses, *p, now_ms))
            .take(count as usize)
            .collect();
        for p in &taken {
            slot.prefixes.remove(p);
            for ip in prefix_addresses(*p) {
                if slot.addresses.remove(&ip) {
                    pool.remove_address(ip);
                }
            }
        }
        taken
    }

    /// Takes ENI `id` out of the pool if none of its addresses is assigned or cooling
    /// down; returns whether it did (then it may be detached).
    pub fn take_eni(&mut self, id: &str, now_ms: u64) -> bool {
        let Some(slot) = self.enis.get(id) else {
            return false;
        };
        if slot
            .addresses
            .iter()
            .any(|ip| !self.pool.is_available(*ip, now_ms))
        {
            return false;
        }
        let slot = self.enis.remove(id).expect("looked up above");
        for ip in slot.addresses {
            self.pool.remove_address(ip);
        }
        true
    }

    /// Each ENI's counters, for [`super::warm::WarmTargets::decide`].
    pub fn usage(&self, now_ms: u64) -> Vec<EniUsage> {
        self.enis
            .values()
            .map(|e| EniUsage {
                id: e.id.clone(),
                device_index: e.device_index,
                primary: e.device_index == 0,
                ips: e.ips.len() as u32,
                prefixes: e.prefixes.len() as u32,
                free_prefixes: e
                    .prefixes
                    .iter()
                    .filter(|p| prefix_free(&self.pool, &e.addresses, **p, now_ms))
                    .count() as u32,
                free_ips: e
                    .ips
                    .iter()
                    .filter(|ip| self.pool.is_available(**ip, now_ms))
                    .count() as u32,
                assigned: e
                    .addresses
                    .iter()
                    .filter(|ip| self.pool.holder(**ip).is_some())
                    .count() as u32,
                cooling: e
                    .addresses
                    .iter()
                    .filter(|ip| {
                        self.pool.holder(**ip).is_none() && self.pool.is_cooling(**ip, now_ms)
                    })
                    .count() as u32,
            })
            .collect()
    }

    pub fn enis(&self) -> impl Iterator<Item = &EniSlot> {
        self.enis.values()
    }

    pub fn stats(&self, now_ms: u64) -> PoolStats {
        self.pool.stats(now_ms)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

/// The address a new pod gets: in the busiest prefix that has one available (so that
/// the other prefixes stay entirely free, for the warm target or for release), lowest
/// first; without an available prefix address, the pool's lowest secondary IP.
fn pick_packed(
    enis: &BTreeMap<String, EniSlot>,
    pool: &Pool,
    now_ms: u64,
) -> Result<Ipv4Addr, IpamError> {
    let mut best: Option<(std::cmp::Reverse<usize>, Ipv4Addr)> = None;
    for slot in enis.values() {
        for p in &slot.prefixes {
            let mut busy = 0;
            let mut first = None;
            for ip in prefix_addresses(*p).filter(|ip| slot.addresses.contains(ip)) {
                if !pool.is_available(ip, now_ms) {
                    busy += 1;
                } else if first.is_none() {
                    first = Some(ip);
                }
            }
            if let Some(ip) = first {
                let key = (std::cmp::Reverse(busy), ip);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
    }
    match best {
        Some((_, ip)) => Ok(ip),
        None => pool.pick(now_ms),
    }
}

/// Whether none of the prefix's addresses in the pool is assigned or cooling down.
fn prefix_free(pool: &Pool, addresses: &BTreeSet<Ipv4Addr>, p: Ipv4Net, now_ms: u64) -> bool {
    prefix_addresses(p)
        .filter(|ip| addresses.contains(ip))
        .all(|ip| pool.is_available(ip, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey::eth0(c)
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn set(ips: &[u8]) -> BTreeSet<Ipv4Addr> {
        ips.iter().map(|i| ip(*i)).collect()
    }

    fn none() -> BTreeSet<Ipv4Net> {
        BTreeSet::new()
    }

    const COOL: u64 = 1_000;

    #[test]
    fn hands_out_only_what_ec2_lists_with_the_enis_table() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        // Nothing synced yet: nothing to give.
        let e = ipam
            .add(key("a"), AttachmentMeta::default(), 0)
            .unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        ipam.sync_eni("eni-0", 0, ip(10), &set(&[11]), &none());
        ipam.sync_eni("eni-1", 1, ip(20), &set(&[21, 22]), &none());
        let a = ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!(
            (a.ip, a.route_table, a.existing),
            (ip(11), MAIN_TABLE, false)
        );
        let b = ipam.add(key("b"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!((b.ip, b.route_table), (ip(21), 2));
        let again = ipam.add(key("b"), AttachmentMeta::default(), 5).unwrap();
        assert_eq!(
            (again.ip, again.route_table, again.existing),
            (ip(21), 2, true)
        );
        let s = ipam.stats(0);
        assert_eq!((s.free, s.assigned, s.cooldown), (1, 2, 0));
    }

    #[test]
    fn sync_drops_free_ips_keeps_assigned_ones_and_skips_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        ipam.sync_eni("eni-0", 0, ip(10), &set(&[11, 12, 13]), &none());
        let a = ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!(a.ip, ip(11));
        let r = ipam.sync_eni("eni-0", 0, ip(10), &set(&[13, 14]), &none());
        assert_eq!(r.added, vec![ip(14)]);
        assert_eq!(r.dropped, vec![ip(12)]);
        assert_eq!(r.orphaned, vec![(key("a"), ip(11))]);
        // The same IP on another ENI, and an ENI's own primary, are never pool IPs.
        let r = ipam.sync_eni("eni-1", 1, ip(20), &set(&[14, 20, 21]), &none());
        assert_eq!(r.added, vec![ip(21)]);
        assert_eq!(r.duplicates, vec![ip(14), ip(20)]);
        // An ENI that went away takes its free IPs along.
        let gone = ipam.retain_enis(&HashSet::from(["eni-0"]));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.dropped, vec![ip(21)]);
        assert_eq!(ipam.enis().count(), 1);
    }

    #[test]
    fn taking_ips_and_enis_for_release_respects_holders_and_cooldown() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        ipam.sync_eni("eni-0", 0, ip(10), &set(&[11, 12, 13]), &none());
        ipam.sync_eni("eni-1", 1, ip(20), &set(&[21]), &none());
        ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        ipam.add(key("b"), AttachmentMeta::default(), 0).unwrap();
        ipam.del(&key("b"), 10).unwrap();
        // .11 assigned, .12 cooling: only .13 can go.
        assert_eq!(ipam.take_free("eni-0", 3, 20), vec![ip(13)]);
        assert!(ipam.take_free("eni-0", 3, 20).is_empty());
        assert_eq!(ipam.take_free("eni-0", 3, 10 + COOL), vec![ip(12)]);
        assert!(!ipam.take_eni("eni-0", 10 + COOL));
        assert!(ipam.take_eni("eni-1", 0));
        let usage = ipam.usage(10 + COOL);
        assert_eq!(usage.len(), 1);
        assert_eq!(
            (usage[0].ips, usage[0].assigned, usage[0].cooling),
            (1, 1, 0)
        );
    }

    #[test]
    fn replayed_assignments_survive_and_get_their_table_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
            ipam.sync_eni("eni-1", 1, ip(20), &set(&[21, 22]), &none());
            ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
            ipam.add(key("b"), AttachmentMeta::default(), 0).unwrap();
            ipam.del(&key("a"), 100).unwrap();
        }
        let (mut ipam, replay) = EniIpam::open(dir.path(), COOL, 200).unwrap();
        assert_eq!(replay.records, 3);
        ipam.sync_eni("eni-1", 1, ip(20), &set(&[21, 22, 23]), &none());
        let b = ipam.add(key("b"), AttachmentMeta::default(), 200).unwrap();
        assert_eq!((b.ip, b.route_table, b.existing), (ip(22), 2, true));
        // .21 is still cooling down after the restart.
        assert_eq!(
            ipam.add(key("c"), AttachmentMeta::default(), 200)
                .unwrap()
                .ip,
            ip(23)
        );
    }

    fn prefix(last: u8) -> Ipv4Net {
        Ipv4Net::new(ip(last), 28).unwrap()
    }

    #[test]
    fn prefixes_give_all_their_addresses_and_go_back_only_entirely_free() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        let two = BTreeSet::from([prefix(32), prefix(48)]);
        let r = ipam.sync_eni("eni-1", 1, ip(20), &set(&[21]), &two);
        assert_eq!(r.added, vec![ip(21)]);
        assert_eq!(r.added_prefixes, vec![prefix(32), prefix(48)]);
        assert_eq!(ipam.stats(0).free, 33);
        // Pods go into one prefix, its network address included, before the secondary IP.
        let a = ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        let b = ipam.add(key("b"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!((a.ip, b.ip, b.route_table), (ip(32), ip(33), 2));
        let u = &ipam.usage(0)[0];
        assert_eq!(
            (u.ips, u.prefixes, u.free_prefixes, u.free_ips, u.assigned),
            (1, 2, 1, 1, 2)
        );
        // Only the unused prefix can go; prefixes and secondary IPs go separately.
        assert_eq!(ipam.take_prefixes("eni-1", 2, 0), vec![prefix(48)]);
        assert_eq!(ipam.take_free("eni-1", 5, 0), vec![ip(21)]);
        assert_eq!(ipam.stats(0).free, 14);
        // Released addresses keep their prefix until their cooldown is over.
        ipam.del(&key("a"), 10).unwrap();
        ipam.del(&key("b"), 10).unwrap();
        assert!(ipam.take_prefixes("eni-1", 1, 20).is_empty());
        assert!(!ipam.take_eni("eni-1", 20));
        assert_eq!(ipam.take_prefixes("eni-1", 1, 10 + COOL), vec![prefix(32)]);
        assert!(ipam.take_eni("eni-1", 10 + COOL));
    }

    #[test]
    fn a_prefix_ec2_drops_orphans_its_holders_and_overlaps_are_not_used_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        ipam.sync_eni("eni-0", 0, ip(10), &set(&[33]), &none());
        let r = ipam.sync_eni(
            "eni-1",
            1,
            ip(20),
            &none_ips(),
            &BTreeSet::from([prefix(32)]),
        );
        assert_eq!(r.duplicates, vec![ip(33)]);
        assert_eq!(ipam.usage(0)[1].free_prefixes, 1);
        let a = ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!((a.ip, a.route_table), (ip(32), 2));
        let r = ipam.sync_eni("eni-1", 1, ip(20), &none_ips(), &none());
        assert_eq!(r.orphaned, vec![(key("a"), ip(32))]);
        assert_eq!(r.dropped_prefixes, vec![prefix(32)]);
        assert!(r.dropped.is_empty(), "{r:?}");
        assert_eq!(ipam.stats(0).free, 1);
    }

    #[test]
    fn assignments_in_a_prefix_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = BTreeSet::from([prefix(48)]);
        {
            let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
            ipam.sync_eni("eni-0", 0, ip(10), &none_ips(), &p);
            ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        }
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        ipam.sync_eni("eni-0", 0, ip(10), &none_ips(), &p);
        let a = ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!(
            (a.ip, a.existing, a.route_table),
            (ip(48), true, MAIN_TABLE)
        );
        assert_eq!(ipam.usage(0)[0].free_prefixes, 0);
        assert_eq!(
            ipam.add(key("b"), AttachmentMeta::default(), 0).unwrap().ip,
            ip(49)
        );
    }

    fn none_ips() -> BTreeSet<Ipv4Addr> {
        BTreeSet::new()
    }

    #[test]
    fn pods_pack_into_the_busiest_prefix_before_secondary_ips() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ipam, _) = EniIpam::open(dir.path(), COOL, 0).unwrap();
        ipam.sync_eni(
            "eni-0",
            0,
            ip(10),
            &set(&[11]),
            &BTreeSet::from([prefix(48)]),
        );
        let a = ipam.add(key("a"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!(a.ip, ip(48), "a prefix address before the secondary IP");
        // A lower prefix arrives: the next pods still go to the one in use.
        ipam.sync_eni(
            "eni-0",
            0,
            ip(10),
            &set(&[11]),
            &BTreeSet::from([prefix(32), prefix(48)]),
        );
        let b = ipam.add(key("b"), AttachmentMeta::default(), 0).unwrap();
        assert_eq!(b.ip, ip(49));
        assert_eq!(ipam.usage(0)[0].free_prefixes, 1);
    }
}
