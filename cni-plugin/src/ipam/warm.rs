//! aws-node's warm-pool arithmetic: from the pool's counters and the node's ENIs, what
//! the reconcile loop should ask EC2 for next. Pure, so every rule is unit-tested.
//!
//! Secondary IPs (the default):
//! - `WARM_ENI_TARGET` (default 1): keep this many ENIs' worth of secondary IPs
//!   available; ENIs are filled completely.
//! - `WARM_IP_TARGET`: keep this many IPs available; `MINIMUM_IP_TARGET`: keep at least
//!   this many IPs on the node. Either one set (non-zero) overrides `WARM_ENI_TARGET`,
//!   and IPs are then allocated and released one by one, in batches.
//!
//! Prefix delegation (`ENABLE_PREFIX_DELEGATION=true`): each address slot of an ENI
//! holds a /28 (16 addresses) instead of one IP, and `WARM_ENI_TARGET` is not used.
//! - `WARM_PREFIX_TARGET` (default 1): keep this many prefixes entirely free (a prefix
//!   one of whose IPs is assigned or cooling down is not free); prefixes beyond it that
//!   are entirely free are released. 0: a prefix is added only when no IP is available.
//! - `WARM_IP_TARGET` / `MINIMUM_IP_TARGET` override it, as aws-node documents: the
//!   shortfall of IPs is rounded up to whole prefixes, and a free prefix is released
//!   only when the targets still hold without its 16 IPs.
//! - Secondary IPs left from before (or from the fallback below) stay usable, and are
//!   released once free while the prefix targets hold without them.
//! - Fallback ([`WarmTargets::fallback`]): when EC2 has no free /28 in the subnet
//!   (InsufficientCidrBlocks), the same number of IPs is kept with secondary IPs:
//!   `WARM_IP_TARGET`/`MINIMUM_IP_TARGET` if set, else `WARM_PREFIX_TARGET` x 16.
//!
//! - `MAX_ENI`: at most this many ENIs, never more than the instance type allows.
//!
//! "Available" excludes assigned IPs and those cooling down after a release.

/// Addresses in one delegated IPv4 prefix (a /28).
pub const IPS_PER_PREFIX: u32 = 16;

/// Where pod addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// One secondary IP per ENI address slot.
    SecondaryIps,
    /// One /28 per slot, keeping `warm_prefix` (WARM_PREFIX_TARGET) prefixes free.
    Prefixes { warm_prefix: u32 },
    /// Prefix delegation while the subnet has no free /28: secondary IPs, with the
    /// targets in IPs (see [`WarmTargets::fallback`]).
    PrefixFallback,
}

/// The targets, as read from the environment (see [`crate::eni::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmTargets {
    pub warm_eni: u32,
    pub warm_ip: Option<u32>,
    pub minimum_ip: Option<u32>,
    /// ENIs this node may have: min(instance type's limit, MAX_ENI).
    pub max_enis: u32,
    /// Address slots per ENI (a secondary IP or a prefix each): the instance type's
    /// IPv4 addresses per ENI, less the ENI's own primary address.
    pub ips_per_eni: u32,
    pub source: Source,
}

/// One ENI as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniUsage {
    pub id: String,
    pub device_index: u32,
    /// The instance's primary ENI is never detached.
    pub primary: bool,
    /// Secondary IPs EC2 lists on it.
    pub ips: u32,
    /// /28 prefixes EC2 lists on it.
    pub prefixes: u32,
    /// Of `prefixes`, those none of whose IPs is assigned or cooling down.
    pub free_prefixes: u32,
    /// Of `ips`, those neither assigned nor cooling down.
    pub free_ips: u32,
    /// Over all its addresses (secondary IPs and prefixes').
    pub assigned: u32,
    pub cooling: u32,
}

impl EniUsage {
    /// Address slots taken.
    fn slots(&self) -> u32 {
        self.ips + self.prefixes
    }

    fn addresses(&self) -> u32 {
        self.ips + self.prefixes * IPS_PER_PREFIX
    }

    /// Holds nothing at all, and is not the primary: only takes an ENI slot.
    fn empty(&self) -> bool {
        !self.primary && self.slots() == 0 && self.assigned == 0 && self.cooling == 0
    }
}

/// What to ask EC2 for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Targets hold (or nothing can be done about them).
    None,
    /// AssignPrivateIpAddresses of `count` secondary IPs on an attached ENI.
    Assign { eni: String, count: u32 },
    /// AssignPrivateIpAddresses of `count` /28 prefixes on an attached ENI.
    AssignPrefixes { eni: String, count: u32 },
    /// Create and attach a new ENI with this many secondary IPs or prefixes.
    CreateEni { ips: u32, prefixes: u32 },
    /// UnassignPrivateIpAddresses of this many free secondary IPs of an ENI.
    Unassign { eni: String, count: u32 },
    /// UnassignPrivateIpAddresses of this many entirely free prefixes of an ENI.
    UnassignPrefixes { eni: String, count: u32 },
    /// Detach and delete an ENI none of whose IPs is assigned or cooling.
    FreeEni { eni: String },
}

/// Pool counters over all ENIs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Addresses: secondary IPs and every IP of every prefix.
    pub total: u32,
    pub assigned: u32,
    pub cooldown: u32,
    pub free_prefixes: u32,
    pub free_ips: u32,
}

impl Counts {
    pub fn of(enis: &[EniUsage]) -> Counts {
        enis.iter().fold(Counts::default(), |c, e| Counts {
            total: c.total + e.addresses(),
            assigned: c.assigned + e.assigned,
            cooldown: c.cooldown + e.cooling,
            free_prefixes: c.free_prefixes + e.free_prefixes,
            free_ips: c.free_ips + e.free_ips,
        })
    }

    pub fn available(&self) -> u32 {
        self.total.saturating_sub(self.assigned + self.cooldown)
    }
}

impl WarmTargets {
    /// WARM_IP_TARGET or MINIMUM_IP_TARGET is in charge.
    pub fn ip_targets(&self) -> bool {
        self.warm_ip.is_some() || self.minimum_ip.is_some()
    }

    /// The targets to use while the subnet has no free /28 for prefix delegation: the
    /// same IP targets, or WARM_PREFIX_TARGET's worth of IPs, in secondary IPs.
    /// Unchanged without prefix delegation.
    pub fn fallback(self) -> WarmTargets {
        let Source::Prefixes { warm_prefix } = self.source else {
            return self;
        };
        let warm_ip = match self.ip_targets() {
            true => self.warm_ip,
            false => Some(warm_prefix.max(1) * IPS_PER_PREFIX),
        };
        WarmTargets {
            warm_ip,
            source: Source::PrefixFallback,
            ..self
        }
    }

    /// IPs lacking for the IP targets (IP-target mode only).
    fn short_ips(&self, c: Counts) -> u32 {
        let warm = self.warm_ip.unwrap_or(0).saturating_sub(c.available());
        let minimum = self.minimum_ip.unwrap_or(0).saturating_sub(c.total);
        warm.max(minimum)
    }

    /// How much the pool lacks, in the units the next assignment adds: prefixes with
    /// prefix delegation, IPs otherwise (`u32::MAX` in ENI mode: fill ENIs completely).
    pub fn short(&self, c: Counts) -> u32 {
        let available = c.available();
        match self.source {
            Source::Prefixes { .. } if self.ip_targets() => {
                self.short_ips(c).div_ceil(IPS_PER_PREFIX)
            }
            Source::Prefixes { warm_prefix: 0 } => u32::from(available == 0),
            Source::Prefixes { warm_prefix } => warm_prefix.saturating_sub(c.free_prefixes),
            _ if self.ip_targets() => self.short_ips(c),
            _ => {
                let low = available < self.warm_eni * self.ips_per_eni
                    || (self.warm_eni == 0 && available == 0);
                if low { u32::MAX } else { 0 }
            }
        }
    }

    /// How many available IPs are beyond the IP targets (IP-target mode only).
    pub fn over(&self, c: Counts) -> u32 {
        if !self.ip_targets() {
            return 0;
        }
        let over = c.available().saturating_sub(self.warm_ip.unwrap_or(0));
        match self.minimum_ip {
            Some(min) => over.min(c.total.saturating_sub(min)),
            None => over,
        }
    }

    /// The next step towards the targets. `enis` are the attached ENIs whose interface is
    /// set up (their IPs count); `pending` says an ENI is attached but not usable yet, so
    /// nothing is added until it is (it would be counted twice).
    pub fn decide(&self, enis: &[EniUsage], pending: bool) -> Action {
        let c = Counts::of(enis);
        let short = self.short(c);
        if short > 0 {
            if pending {
                return Action::None;
            }
            return self.grow(enis, short);
        }
        // Newest ENIs first, so addresses drain from the ENIs that are freed next.
        let mut newest: Vec<&EniUsage> = enis.iter().collect();
        newest.sort_by_key(|e| std::cmp::Reverse(e.device_index));
        match self.source {
            Source::Prefixes { warm_prefix } => self.shrink_prefixes(&newest, c, warm_prefix),
            Source::SecondaryIps => {
                // Prefixes left from prefix delegation: pods get secondary IPs now, so
                // each goes back once it is entirely free.
                if let Some(e) = newest.iter().find(|e| e.free_prefixes > 0) {
                    return Action::UnassignPrefixes {
                        eni: e.id.clone(),
                        count: e.free_prefixes,
                    };
                }
                self.shrink_ips(&newest, c)
            }
            Source::PrefixFallback => self.shrink_ips(&newest, c),
        }
    }

    /// Adds `short` IPs or prefixes: to the lowest ENI with a free slot, else on a new
    /// ENI, no bigger than needed.
    fn grow(&self, enis: &[EniUsage], short: u32) -> Action {
        let prefixes = matches!(self.source, Source::Prefixes { .. });
        let mut by_index: Vec<&EniUsage> = enis.iter().collect();
        by_index.sort_by_key(|e| e.device_index);
        if let Some(e) = by_index.iter().find(|e| e.slots() < self.ips_per_eni) {
            let eni = e.id.clone();
            let count = short.min(self.ips_per_eni - e.slots());
            return match prefixes {
                true => Action::AssignPrefixes { eni, count },
                false => Action::Assign { eni, count },
            };
        }
        if (enis.len() as u32) < self.max_enis && self.ips_per_eni > 0 {
            let n = short.min(self.ips_per_eni);
            return match prefixes {
                true => Action::CreateEni {
                    ips: 0,
                    prefixes: n,
                },
                false => Action::CreateEni {
                    ips: n,
                    prefixes: 0,
                },
            };
        }
        Action::None
    }

    /// Releases with secondary IPs (also prefix delegation's fallback).
    fn shrink_ips(&self, newest: &[&EniUsage], c: Counts) -> Action {
        if self.ip_targets() {
            let over = self.over(c);
            if over > 0
                && let Some(e) = newest.iter().find(|e| e.free_ips > 0)
            {
                return Action::Unassign {
                    eni: e.id.clone(),
                    count: over.min(e.free_ips),
                };
            }
            if let Some(e) = newest.iter().find(|e| e.empty()) {
                return Action::FreeEni { eni: e.id.clone() };
            }
            return Action::None;
        }
        // ENI mode frees a whole unused ENI when the rest still meets WARM_ENI_TARGET.
        let keep = self.warm_eni * self.ips_per_eni;
        let unused = |e: &&&EniUsage| !e.primary && e.assigned == 0 && e.cooling == 0;
        if let Some(e) = newest.iter().find(unused)
            && c.available() - e.addresses() >= keep
            && (c.available() - e.addresses() > 0 || self.warm_eni > 0)
        {
            return Action::FreeEni { eni: e.id.clone() };
        }
        Action::None
    }

    /// Releases with prefix delegation: spare free secondary IPs first (a prefix holds
    /// 16 addresses in the slot one of them takes), then spare free prefixes, then ENIs
    /// left empty.
    fn shrink_prefixes(&self, newest: &[&EniUsage], c: Counts, warm_prefix: u32) -> Action {
        let (spare_ips, spare_prefixes) = if self.ip_targets() {
            let over = self.over(c);
            (over, over / IPS_PER_PREFIX)
        } else if warm_prefix == 0 {
            // Keep at least one IP available, nothing more.
            let beyond_one = c.available().saturating_sub(1);
            (beyond_one, beyond_one / IPS_PER_PREFIX)
        } else {
            let spare_ips = if c.free_prefixes >= warm_prefix {
                c.free_ips
            } else {
                0
            };
            (spare_ips, c.free_prefixes.saturating_sub(warm_prefix))
        };
        if spare_ips > 0
            && let Some(e) = newest.iter().find(|e| e.free_ips > 0)
        {
            return Action::Unassign {
                eni: e.id.clone(),
                count: spare_ips.min(e.free_ips),
            };
        }
        if spare_prefixes > 0
            && let Some(e) = newest.iter().find(|e| e.free_prefixes > 0)
        {
            return Action::UnassignPrefixes {
                eni: e.id.clone(),
                count: spare_prefixes.min(e.free_prefixes),
            };
        }
        if let Some(e) = newest.iter().find(|e| e.empty()) {
            return Action::FreeEni { eni: e.id.clone() };
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The actions by ENI name, as the tables below read.
    fn assign(eni: &str, count: u32) -> Action {
        Action::Assign {
            eni: eni.into(),
            count,
        }
    }
    fn assign_prefixes(eni: &str, count: u32) -> Action {
        Action::AssignPrefixes {
            eni: eni.into(),
            count,
        }
    }
    fn unassign(eni: &str, count: u32) -> Action {
        Action::Unassign {
            eni: eni.into(),
            count,
        }
    }
    fn unassign_prefixes(eni: &str, count: u32) -> Action {
        Action::UnassignPrefixes {
            eni: eni.into(),
            count,
        }
    }
    fn free_eni(eni: &str) -> Action {
        Action::FreeEni { eni: eni.into() }
    }

    /// An ENI with secondary IPs only.
    fn eni(id: &str, device_index: u32, ips: u32, assigned: u32, cooling: u32) -> EniUsage {
        EniUsage {
            id: id.into(),
            device_index,
            primary: device_index == 0,
            ips,
            prefixes: 0,
            free_prefixes: 0,
            free_ips: ips.saturating_sub(assigned + cooling),
            assigned,
            cooling,
        }
    }

    /// An ENI with `prefixes` prefixes, `free` of them entirely free, `used` IPs of the
    /// others assigned, and `ips` free secondary IPs.
    fn pd_eni(
        id: &str,
        device_index: u32,
        prefixes: u32,
        free: u32,
        used: u32,
        ips: u32,
    ) -> EniUsage {
        EniUsage {
            id: id.into(),
            device_index,
            primary: device_index == 0,
            ips,
            prefixes,
            free_prefixes: free,
            free_ips: ips,
            assigned: used,
            cooling: 0,
        }
    }

    /// m5.large with prefix delegation.
    fn pd_targets(warm_prefix: u32, warm_ip: Option<u32>, minimum_ip: Option<u32>) -> WarmTargets {
        WarmTargets {
            source: Source::Prefixes { warm_prefix },
            ..targets(1, warm_ip, minimum_ip)
        }
    }

    /// m5.large: 3 ENIs of 10 addresses, 9 of them secondary.
    fn targets(warm_eni: u32, warm_ip: Option<u32>, minimum_ip: Option<u32>) -> WarmTargets {
        WarmTargets {
            warm_eni,
            warm_ip,
            minimum_ip,
            max_enis: 3,
            ips_per_eni: 9,
            source: Source::SecondaryIps,
        }
    }

    #[test]
    fn warm_eni_fills_the_primary_then_adds_an_eni() {
        let t = targets(1, None, None);
        let fresh = [eni("eni-0", 0, 0, 0, 0)];
        assert_eq!(t.decide(&fresh, false), assign("eni-0", 9));
        // A full ENI free: the target holds.
        assert_eq!(t.decide(&[eni("eni-0", 0, 9, 0, 0)], false), Action::None);
        // One pod: less than an ENI's worth is available, and eni-0 is full.
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 9, 1, 0)], false),
            Action::CreateEni {
                ips: 9,
                prefixes: 0
            }
        );
        // ...but not while an attached ENI is still being plugged.
        assert_eq!(t.decide(&[eni("eni-0", 0, 9, 1, 0)], true), Action::None);
    }

    #[test]
    fn warm_eni_stops_at_max_enis_and_frees_unused_enis() {
        let t = targets(1, None, None);
        let full = [
            eni("eni-0", 0, 9, 9, 0),
            eni("eni-1", 1, 9, 9, 0),
            eni("eni-2", 2, 9, 5, 0),
        ];
        assert_eq!(t.decide(&full, false), Action::None);
        // All pods gone: 27 available; eni-2 goes (18 left), then eni-1 (9 left, the
        // target), then nothing: the primary stays.
        let idle = [
            eni("eni-0", 0, 9, 0, 0),
            eni("eni-1", 1, 9, 0, 0),
            eni("eni-2", 2, 9, 0, 0),
        ];
        assert_eq!(t.decide(&idle, false), free_eni("eni-2"));
        assert_eq!(t.decide(&idle[..2], false), free_eni("eni-1"));
        assert_eq!(t.decide(&idle[..1], false), Action::None);
        // An ENI with a cooling IP is not unused.
        let cooling = [
            eni("eni-0", 0, 9, 0, 0),
            eni("eni-1", 1, 9, 0, 1),
            eni("eni-2", 2, 9, 0, 0),
        ];
        assert_eq!(t.decide(&cooling, false), free_eni("eni-2"));
    }

    #[test]
    fn warm_ip_target_allocates_and_releases_in_batches() {
        let t = targets(1, Some(3), None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 0, 0, 0)], false),
            assign("eni-0", 3)
        );
        assert_eq!(t.decide(&[eni("eni-0", 0, 3, 0, 0)], false), Action::None);
        // Two pods: two short.
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 3, 2, 0)], false),
            assign("eni-0", 2)
        );
        // Cooling IPs are not available, and not released either.
        assert_eq!(t.decide(&[eni("eni-0", 0, 5, 0, 2)], false), Action::None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 5, 0, 0)], false),
            unassign("eni-0", 2)
        );
        // The primary is full: the shortfall goes to a new ENI, no bigger than needed.
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 9, 8, 0)], false),
            Action::CreateEni {
                ips: 2,
                prefixes: 0
            }
        );
        // IPs drain from the newest ENI, and an emptied ENI is freed.
        let two = [eni("eni-0", 0, 9, 0, 0), eni("eni-1", 1, 2, 0, 0)];
        assert_eq!(t.decide(&two, false), unassign("eni-1", 2));
        let two = [eni("eni-0", 0, 3, 0, 0), eni("eni-1", 1, 0, 0, 0)];
        assert_eq!(t.decide(&two, false), free_eni("eni-1"));
    }

    #[test]
    fn minimum_ip_target_keeps_a_floor() {
        let t = targets(1, None, Some(5));
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 2, 0, 0)], false),
            assign("eni-0", 3)
        );
        // 5 on the node, none assigned: over WARM_IP_TARGET (0) but at the minimum.
        assert_eq!(t.decide(&[eni("eni-0", 0, 5, 0, 0)], false), Action::None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 7, 0, 0)], false),
            unassign("eni-0", 2)
        );
        // With both: warm IPs on top of the assigned ones, never under the minimum.
        let t = targets(1, Some(2), Some(5));
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 5, 4, 0)], false),
            assign("eni-0", 1)
        );
    }

    #[test]
    fn warm_eni_zero_allocates_only_when_empty() {
        let t = targets(0, None, None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 9, 9, 0)], false),
            Action::CreateEni {
                ips: 9,
                prefixes: 0
            }
        );
        assert_eq!(t.decide(&[eni("eni-0", 0, 9, 8, 0)], false), Action::None);
    }

    #[test]
    fn warm_prefix_target_keeps_free_prefixes_and_releases_extra_ones() {
        let t = pd_targets(1, None, None);
        // A fresh node: one /28 on the primary.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 0, 0, 0, 0)], false),
            assign_prefixes("eni-0", 1)
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 1, 0, 0)], false),
            Action::None
        );
        // One pod in it: no prefix is entirely free, so a second one comes (aws-node's
        // table: 5 pods, 2 prefixes).
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 0, 1, 0)], false),
            assign_prefixes("eni-0", 1)
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 2, 1, 5, 0)], false),
            Action::None
        );
        // WARM_PREFIX_TARGET=2 asks for both at once.
        assert_eq!(
            pd_targets(2, None, None).decide(&[pd_eni("eni-0", 0, 0, 0, 0, 0)], false),
            assign_prefixes("eni-0", 2)
        );
        // Pods gone: 3 free prefixes, 2 go back, newest ENI first.
        let idle = [
            pd_eni("eni-0", 0, 2, 2, 0, 0),
            pd_eni("eni-1", 1, 1, 1, 0, 0),
        ];
        assert_eq!(t.decide(&idle, false), unassign_prefixes("eni-1", 1));
        let idle = [
            pd_eni("eni-0", 0, 2, 2, 0, 0),
            pd_eni("eni-1", 1, 0, 0, 0, 0),
        ];
        assert_eq!(t.decide(&idle, false), unassign_prefixes("eni-0", 1));
        // A prefix with a cooling IP is not free: the other one stays as the warm one.
        let mut cooling = pd_eni("eni-0", 0, 2, 1, 0, 0);
        cooling.cooling = 1;
        assert_eq!(t.decide(&[cooling], false), Action::None);
        // An emptied secondary ENI is freed.
        let emptied = [
            pd_eni("eni-0", 0, 1, 1, 0, 0),
            pd_eni("eni-1", 1, 0, 0, 0, 0),
        ];
        assert_eq!(t.decide(&emptied, false), free_eni("eni-1"));
    }

    #[test]
    fn prefixes_fill_the_enis_slots_then_a_new_eni_gets_them() {
        let t = pd_targets(1, None, None);
        // 9 slots on m5.large's primary, all prefixes in use.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 9, 0, 144, 0)], false),
            Action::CreateEni {
                ips: 0,
                prefixes: 1
            }
        );
        // Secondary IPs take slots too.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 8, 0, 128, 1)], false),
            Action::CreateEni {
                ips: 0,
                prefixes: 1
            }
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 9, 0, 144, 0)], true),
            Action::None
        );
        let full = [
            pd_eni("eni-0", 0, 9, 0, 144, 0),
            pd_eni("eni-1", 1, 9, 0, 144, 0),
            pd_eni("eni-2", 2, 9, 0, 144, 0),
        ];
        assert_eq!(t.decide(&full, false), Action::None);
    }

    #[test]
    fn ip_targets_with_prefixes_round_up_to_whole_prefixes() {
        // aws-node's p3dn.24xlarge rows: WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10.
        let t = pd_targets(1, Some(5), Some(10));
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 0, 0, 0, 0)], false),
            assign_prefixes("eni-0", 1)
        );
        // 7 pods: 12 needed, 16 there.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 0, 7, 0)], false),
            Action::None
        );
        // 15 pods: 20 needed, a second prefix.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 0, 15, 0)], false),
            assign_prefixes("eni-0", 1)
        );
        // 32 pods: 37 needed, 32 there.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 2, 0, 32, 0)], false),
            assign_prefixes("eni-0", 1)
        );
        // Nothing is used and only MINIMUM_IP_TARGET=40 asks: 3 prefixes at once.
        assert_eq!(
            pd_targets(1, None, Some(40)).decide(&[pd_eni("eni-0", 0, 0, 0, 0, 0)], false),
            assign_prefixes("eni-0", 3)
        );
    }

    #[test]
    fn ip_targets_with_prefixes_release_what_they_can_spare() {
        let t = pd_targets(1, Some(5), Some(10));
        let mut busy = pd_eni("eni-0", 0, 2, 0, 30, 0);
        assert_eq!(
            t.decide(std::slice::from_ref(&busy), false),
            assign_prefixes("eni-0", 1)
        );
        busy.assigned = 45;
        busy.prefixes = 3;
        assert_eq!(t.decide(&[busy], false), assign_prefixes("eni-0", 1));
        // Idle with 3 prefixes: 48 available, 10 needed: 2 go (one at a time per ENI).
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 3, 3, 0, 0)], false),
            unassign_prefixes("eni-0", 2)
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 1, 0, 0)], false),
            Action::None
        );
        // Free secondary IPs go first, prefixes only when 16 can go.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 1, 0, 3)], false),
            unassign("eni-0", 3)
        );
    }

    #[test]
    fn without_a_free_28_the_same_warmth_comes_in_secondary_ips() {
        let t = pd_targets(1, None, None).fallback();
        assert_eq!(t.source, Source::PrefixFallback);
        assert_eq!(t.warm_ip, Some(16));
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 0, 0, 0, 0)], false),
            assign("eni-0", 9)
        );
        // The primary's slots are full: a new ENI with IPs, not prefixes.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 0, 0, 0, 9)], false),
            Action::CreateEni {
                ips: 7,
                prefixes: 0
            }
        );
        // IP targets are kept as they are.
        let t = pd_targets(1, Some(3), None).fallback();
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 0, 0, 0, 0)], false),
            assign("eni-0", 3)
        );
        // A prefix that is there is kept, and counts.
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 1, 0, 0)], false),
            Action::None
        );
        // Back with prefixes: free secondary IPs go once the warm prefix is there, not
        // before.
        let t = pd_targets(1, None, None);
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 0, 0, 0, 5)], false),
            assign_prefixes("eni-0", 1)
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 1, 0, 5)], false),
            unassign("eni-0", 5)
        );
        // Secondary-IP targets are unchanged by a fallback.
        assert_eq!(targets(1, None, None).fallback(), targets(1, None, None));
    }

    #[test]
    fn without_prefix_delegation_free_prefixes_are_released() {
        let t = targets(1, None, None);
        let mut left = pd_eni("eni-0", 0, 2, 1, 3, 9);
        assert_eq!(
            t.decide(std::slice::from_ref(&left), false),
            unassign_prefixes("eni-0", 1)
        );
        left.free_prefixes = 0;
        // The used one stays, and its IPs count.
        assert_eq!(t.decide(&[left], false), Action::None);
    }

    #[test]
    fn warm_prefix_zero_adds_a_prefix_only_when_nothing_is_available() {
        let t = pd_targets(0, None, None);
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 0, 10, 0)], false),
            Action::None
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 1, 0, 16, 0)], false),
            assign_prefixes("eni-0", 1)
        );
        assert_eq!(
            t.decide(&[pd_eni("eni-0", 0, 2, 1, 3, 0)], false),
            unassign_prefixes("eni-0", 1)
        );
    }
}
