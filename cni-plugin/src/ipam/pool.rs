//! An address pool in memory: which addresses it may hand out (a CIDR range in podcidr
//! mode, the ENIs' secondary IPs in eni mode), who holds which address, and which released
//! addresses are still cooling down. Pure bookkeeping; persistence is [`super::journal`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::IpamError;

/// How long a released address stays unavailable, so that a late packet or a stale
/// conntrack entry for the old pod never reaches a new one (aws-node uses 30 s too).
pub const COOLDOWN_MS: u64 = 30_000;

/// One attachment: the runtime's container (sandbox) id and the pod-side interface name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

#[cfg(test)]
impl AttachmentKey {
    /// A test attachment: container `c`'s eth0.
    pub(crate) fn eth0(c: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }
}

/// What we remember about an attachment besides its address (for operators and GC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachmentMeta {
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub ip: Ipv4Addr,
    pub meta: AttachmentMeta,
    /// Wall-clock milliseconds since the epoch.
    pub assigned_at_ms: u64,
}

/// Counters for Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Usable addresses not assigned (including those in cooldown).
    pub free: u32,
    pub assigned: u32,
    /// Free addresses still cooling down.
    pub cooldown: u32,
}

impl PoolStats {
    /// Free addresses that an ADD could get right now.
    pub fn available(&self) -> u32 {
        self.free - self.cooldown
    }
}

/// The addresses a pool may hand out.
#[derive(Debug, Clone)]
enum Usable {
    /// `first..=last` of a pod CIDR.
    Range {
        cidr: Ipv4Net,
        first: u32,
        last: u32,
    },
    /// An explicit set that grows and shrinks (the ENIs' secondary IPs).
    Set(BTreeSet<Ipv4Addr>),
}

#[derive(Debug, Clone)]
pub struct Pool {
    usable: Usable,
    cooldown_ms: u64,
    by_key: HashMap<AttachmentKey, Assignment>,
    by_ip: BTreeMap<Ipv4Addr, AttachmentKey>,
    /// Released address -> release time (wall-clock ms).
    released_at: HashMap<Ipv4Addr, u64>,
}

impl Pool {
    /// A pool over `cidr`; refuses ranges with no usable address once the network,
    /// broadcast and the node's first host address are set aside.
    pub fn new(cidr: Ipv4Net) -> Result<Pool, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 29 {
            return Err(IpamError::InvalidCidr(format!(
                "{cidr} is too small: a pod CIDR needs at least a /29 (network, broadcast and the node's .1 are reserved)"
            )));
        }
        // network+2 ..= broadcast-1: the network, the node's .1 and the broadcast are not ours.
        let usable = Usable::Range {
            cidr,
            first: u32::from(cidr.network()) + 2,
            last: u32::from(cidr.broadcast()) - 1,
        };
        Ok(Pool::with_usable(usable))
    }

    /// A pool of exactly the addresses later given to [`Pool::add_address`].
    pub fn of_addresses() -> Pool {
        Pool::with_usable(Usable::Set(BTreeSet::new()))
    }

    fn with_usable(usable: Usable) -> Pool {
        Pool {
            usable,
            cooldown_ms: COOLDOWN_MS,
            by_key: HashMap::new(),
            by_ip: BTreeMap::new(),
            released_at: HashMap::new(),
        }
    }

    /// Overrides [`COOLDOWN_MS`] (eni mode's IP_COOLDOWN_PERIOD).
    pub fn with_cooldown_ms(mut self, cooldown_ms: u64) -> Pool {
        self.cooldown_ms = cooldown_ms;
        self
    }

    pub fn cooldown_ms(&self) -> u64 {
        self.cooldown_ms
    }

    /// The pod CIDR of a range pool; `None` for an address-set pool.
    pub fn cidr(&self) -> Option<Ipv4Net> {
        match &self.usable {
            Usable::Range { cidr, .. } => Some(*cidr),
            Usable::Set(_) => None,
        }
    }

    /// Makes `ip` available to [`Pool::pick`] (address-set pools only; returns whether it
    /// was new).
    pub fn add_address(&mut self, ip: Ipv4Addr) -> bool {
        match &mut self.usable {
            Usable::Set(set) => set.insert(ip),
            Usable::Range { .. } => false,
        }
    }

    /// Stops handing `ip` out (address-set pools only; returns whether it was there). An
    /// attachment holding it keeps it: the caller decides what that means.
    pub fn remove_address(&mut self, ip: Ipv4Addr) -> bool {
        match &mut self.usable {
            Usable::Set(set) => set.remove(&ip),
            Usable::Range { .. } => false,
        }
    }

    fn usable(&self) -> u32 {
        match &self.usable {
            Usable::Range { first, last, .. } => last - first + 1,
            Usable::Set(set) => set.len() as u32,
        }
    }

    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        match &self.usable {
            Usable::Range { first, last, .. } => (*first..=*last).contains(&u32::from(ip)),
            Usable::Set(set) => set.contains(&ip),
        }
    }

    fn candidates(&self) -> Box<dyn Iterator<Item = Ipv4Addr> + '_> {
        match &self.usable {
            Usable::Range { first, last, .. } => Box::new((*first..=*last).map(Ipv4Addr::from)),
            Usable::Set(set) => Box::new(set.iter().copied()),
        }
    }

    /// Whether `ip` is usable, unassigned and not cooling down at `now_ms`.
    pub fn is_available(&self, ip: Ipv4Addr, now_ms: u64) -> bool {
        self.in_range(ip) && !self.by_ip.contains_key(&ip) && !self.is_cooling(ip, now_ms)
    }

    /// Whether `ip` was released less than the cooldown before `now_ms`.
    pub fn is_cooling(&self, ip: Ipv4Addr, now_ms: u64) -> bool {
        self.released_at
            .get(&ip)
            .is_some_and(|t| self.in_cooldown(*t, now_ms))
    }

    /// The attachment holding `ip`, if any.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&AttachmentKey> {
        self.by_ip.get(&ip)
    }

    fn in_cooldown(&self, released_at_ms: u64, now_ms: u64) -> bool {
        now_ms < released_at_ms.saturating_add(self.cooldown_ms)
    }

    pub fn get(&self, key: &AttachmentKey) -> Option<&Assignment> {
        self.by_key.get(key)
    }

    pub fn assignments(&self) -> impl Iterator<Item = (&AttachmentKey, &Assignment)> {
        self.by_key.iter()
    }

    /// Releases still cooling down at `now_ms`, as (ip, release time).
    pub fn cooling(&self, now_ms: u64) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.released_at
            .iter()
            .filter(move |(ip, t)| self.in_cooldown(**t, now_ms) && !self.by_ip.contains_key(ip))
            .map(|(ip, t)| (*ip, *t))
    }

    /// The address a new attachment would get at `now_ms`: the lowest usable one that is
    /// neither assigned nor cooling down.
    pub fn pick(&self, now_ms: u64) -> Result<Ipv4Addr, IpamError> {
        self.candidates()
            .find(|ip| !self.by_ip.contains_key(ip) && !self.is_cooling(*ip, now_ms))
            .ok_or_else(|| {
                let stats = self.stats(now_ms);
                IpamError::Exhausted {
                    pool: match &self.usable {
                        Usable::Range { cidr, .. } => cidr.to_string(),
                        Usable::Set(set) => format!("this node's ENIs ({} IPs)", set.len()),
                    },
                    assigned: stats.assigned,
                    cooldown: stats.cooldown,
                    cooldown_s: self.cooldown_ms / 1000,
                }
            })
    }

    /// Records an assignment (from an ADD or a journal replay). An address held by
    /// another attachment is refused; re-recording the same pair is a no-op.
    pub fn insert(&mut self, key: AttachmentKey, a: Assignment) -> Result<(), IpamError> {
        if let Some(owner) = self.by_ip.get(&a.ip)
            && owner != &key
        {
            return Err(IpamError::Conflict {
                ip: a.ip,
                owner: owner.clone(),
            });
        }
        if let Some(old) = self.by_key.get(&key)
            && old.ip != a.ip
        {
            self.by_ip.remove(&old.ip);
        }
        self.released_at.remove(&a.ip);
        self.by_ip.insert(a.ip, key.clone());
        self.by_key.insert(key, a);
        Ok(())
    }

    /// Releases the attachment's address at `now_ms`; `None` if it held none.
    pub fn remove(&mut self, key: &AttachmentKey, now_ms: u64) -> Option<Assignment> {
        let a = self.by_key.remove(key)?;
        self.by_ip.remove(&a.ip);
        self.released_at.insert(a.ip, now_ms);
        Some(a)
    }

    /// Records that `ip` was released at `released_at_ms` by an attachment we no longer
    /// track (journal replay); ignored if the address is assigned again.
    pub fn note_release(&mut self, ip: Ipv4Addr, released_at_ms: u64) {
        if !self.by_ip.contains_key(&ip) {
            let t = self.released_at.entry(ip).or_insert(released_at_ms);
            *t = (*t).max(released_at_ms);
        }
    }

    /// Forgets releases whose cooldown is over (keeps the map small).
    pub fn expire_cooldowns(&mut self, now_ms: u64) {
        let cooldown_ms = self.cooldown_ms;
        self.released_at
            .retain(|_, t| now_ms < t.saturating_add(cooldown_ms));
    }

    pub fn stats(&self, now_ms: u64) -> PoolStats {
        // Assignments outside the range (the CIDR changed across a restart) are still
        // held, but they do not use this range's addresses.
        let assigned_in_range = self.by_ip.keys().filter(|ip| self.in_range(**ip)).count() as u32;
        let cooldown = self
            .cooling(now_ms)
            .filter(|(ip, _)| self.in_range(*ip))
            .count() as u32;
        PoolStats {
            free: self.usable() - assigned_in_range,
            assigned: self.by_key.len() as u32,
            cooldown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey::eth0(c)
    }

    fn assign(pool: &mut Pool, c: &str, now: u64) -> Ipv4Addr {
        let ip = pool.pick(now).unwrap();
        pool.insert(
            key(c),
            Assignment {
                ip,
                meta: AttachmentMeta::default(),
                assigned_at_ms: now,
            },
        )
        .unwrap();
        ip
    }

    #[test]
    fn skips_network_first_host_and_broadcast() {
        let mut pool = Pool::new("10.1.0.0/29".parse().unwrap()).unwrap();
        let ips: Vec<_> = (0..5)
            .map(|i| assign(&mut pool, &format!("c{i}"), 0))
            .collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        assert_eq!(ips, want);
        let e = pool.pick(0).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { assigned: 5, .. }), "{e}");
    }

    #[test]
    fn a_host_bits_cidr_is_truncated_and_tiny_ones_refused() {
        let pool = Pool::new("10.1.0.77/24".parse().unwrap()).unwrap();
        assert_eq!(pool.cidr().unwrap().to_string(), "10.1.0.0/24");
        assert_eq!(pool.stats(0).free, 253);
        assert!(Pool::new("10.1.0.0/30".parse().unwrap()).is_err());
    }

    #[test]
    fn released_addresses_cool_down() {
        let mut pool = Pool::new("10.1.0.0/24".parse().unwrap()).unwrap();
        let a = assign(&mut pool, "a", 1_000);
        assert_eq!(a, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(pool.remove(&key("a"), 2_000).unwrap().ip, a);
        assert!(pool.remove(&key("a"), 2_000).is_none());
        let s = pool.stats(2_000);
        assert_eq!((s.free, s.assigned, s.cooldown), (253, 0, 1));
        // Within the cooldown the next address is used...
        assert_eq!(
            assign(&mut pool, "b", 2_000 + COOLDOWN_MS - 1),
            Ipv4Addr::new(10, 1, 0, 3)
        );
        // ...after it, the lowest one again.
        assert_eq!(assign(&mut pool, "c", 2_000 + COOLDOWN_MS), a);
        assert_eq!(pool.stats(2_000 + COOLDOWN_MS).cooldown, 0);
    }

    #[test]
    fn cooldown_makes_a_full_pool_exhausted() {
        let mut pool = Pool::new("10.1.0.0/29".parse().unwrap()).unwrap();
        for i in 0..5 {
            assign(&mut pool, &format!("c{i}"), 0);
        }
        pool.remove(&key("c0"), 10);
        let e = pool.pick(20).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { cooldown: 1, .. }), "{e}");
        assert_eq!(pool.stats(20).available(), 0);
        assert_eq!(
            pool.pick(10 + COOLDOWN_MS).unwrap(),
            Ipv4Addr::new(10, 1, 0, 2)
        );
    }

    #[test]
    fn an_address_cannot_have_two_owners() {
        let mut pool = Pool::new("10.1.0.0/24".parse().unwrap()).unwrap();
        let ip = assign(&mut pool, "a", 0);
        let e = pool
            .insert(
                key("b"),
                Assignment {
                    ip,
                    meta: AttachmentMeta::default(),
                    assigned_at_ms: 0,
                },
            )
            .unwrap_err();
        assert!(matches!(e, IpamError::Conflict { .. }), "{e}");
    }
}
