//! aws-node's warm-pool arithmetic: from the pool's counters and the node's ENIs, what
//! the reconcile loop should ask EC2 for next. Pure, so every rule is unit-tested.
//!
//! - `WARM_ENI_TARGET` (default 1): keep this many ENIs' worth of secondary IPs
//!   available; ENIs are filled completely.
//! - `WARM_IP_TARGET`: keep this many IPs available; `MINIMUM_IP_TARGET`: keep at least
//!   this many IPs on the node. Either one set (non-zero) overrides `WARM_ENI_TARGET`,
//!   and IPs are then allocated and released one by one, in batches.
//! - `MAX_ENI`: at most this many ENIs, never more than the instance type allows.
//!
//! "Available" excludes assigned IPs and those cooling down after a release.

/// The targets, as read from the environment (see [`crate::eni::config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmTargets {
    pub warm_eni: u32,
    pub warm_ip: Option<u32>,
    pub minimum_ip: Option<u32>,
    /// ENIs this node may have: min(instance type's limit, MAX_ENI).
    pub max_enis: u32,
    /// Secondary IPs per ENI: the instance type's IPv4 addresses per ENI, less the
    /// ENI's own primary address.
    pub ips_per_eni: u32,
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
    pub assigned: u32,
    pub cooling: u32,
}

impl EniUsage {
    fn free(&self) -> u32 {
        self.ips.saturating_sub(self.assigned + self.cooling)
    }
}

/// What to ask EC2 for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Targets hold (or nothing can be done about them).
    None,
    /// AssignPrivateIpAddresses on an attached ENI.
    Assign { eni: String, count: u32 },
    /// Create and attach a new ENI with this many secondary IPs.
    CreateEni { ips: u32 },
    /// UnassignPrivateIpAddresses of this many free IPs of an ENI.
    Unassign { eni: String, count: u32 },
    /// Detach and delete an ENI none of whose IPs is assigned or cooling.
    FreeEni { eni: String },
}

/// Pool counters over all ENIs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub assigned: u32,
    pub cooldown: u32,
}

impl Counts {
    pub fn of(enis: &[EniUsage]) -> Counts {
        enis.iter().fold(Counts::default(), |c, e| Counts {
            total: c.total + e.ips,
            assigned: c.assigned + e.assigned,
            cooldown: c.cooldown + e.cooling,
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

    /// How many IPs the pool lacks (`u32::MAX` in ENI mode: fill ENIs completely).
    pub fn short(&self, c: Counts) -> u32 {
        let available = c.available();
        if self.ip_targets() {
            let warm = self.warm_ip.unwrap_or(0).saturating_sub(available);
            let minimum = self.minimum_ip.unwrap_or(0).saturating_sub(c.total);
            return warm.max(minimum);
        }
        let low =
            available < self.warm_eni * self.ips_per_eni || (self.warm_eni == 0 && available == 0);
        if low { u32::MAX } else { 0 }
    }

    /// How many available IPs are beyond the targets (IP-target mode only).
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
            let mut by_index: Vec<&EniUsage> = enis.iter().collect();
            by_index.sort_by_key(|e| e.device_index);
            if let Some(e) = by_index.iter().find(|e| e.ips < self.ips_per_eni) {
                return Action::Assign {
                    eni: e.id.clone(),
                    count: short.min(self.ips_per_eni - e.ips),
                };
            }
            if (enis.len() as u32) < self.max_enis && self.ips_per_eni > 0 {
                return Action::CreateEni {
                    ips: short.min(self.ips_per_eni),
                };
            }
            return Action::None;
        }
        // Newest ENIs first, so IPs drain from the ENIs that are freed next.
        let mut newest: Vec<&EniUsage> = enis.iter().collect();
        newest.sort_by_key(|e| std::cmp::Reverse(e.device_index));
        let unused = |e: &&&EniUsage| !e.primary && e.assigned == 0 && e.cooling == 0;
        if self.ip_targets() {
            let over = self.over(c);
            if over > 0
                && let Some(e) = newest.iter().find(|e| e.free() > 0)
            {
                return Action::Unassign {
                    eni: e.id.clone(),
                    count: over.min(e.free()),
                };
            }
            // An ENI left without IPs only takes a slot.
            if let Some(e) = newest.iter().find(|e| unused(e) && e.ips == 0) {
                return Action::FreeEni { eni: e.id.clone() };
            }
            return Action::None;
        }
        // ENI mode frees a whole unused ENI when the rest still meets WARM_ENI_TARGET.
        let keep = self.warm_eni * self.ips_per_eni;
        if let Some(e) = newest.iter().find(unused)
            && c.available() - e.ips >= keep
            && (c.available() - e.ips > 0 || self.warm_eni > 0)
        {
            return Action::FreeEni { eni: e.id.clone() };
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni(id: &str, device_index: u32, ips: u32, assigned: u32, cooling: u32) -> EniUsage {
        EniUsage {
            id: id.into(),
            device_index,
            primary: device_index == 0,
            ips,
            assigned,
            cooling,
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
        }
    }

    #[test]
    fn warm_eni_fills_the_primary_then_adds_an_eni() {
        let t = targets(1, None, None);
        let fresh = [eni("eni-0", 0, 0, 0, 0)];
        assert_eq!(
            t.decide(&fresh, false),
            Action::Assign {
                eni: "eni-0".into(),
                count: 9
            }
        );
        // A full ENI free: the target holds.
        assert_eq!(t.decide(&[eni("eni-0", 0, 9, 0, 0)], false), Action::None);
        // One pod: less than an ENI's worth is available, and eni-0 is full.
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 9, 1, 0)], false),
            Action::CreateEni { ips: 9 }
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
        assert_eq!(
            t.decide(&idle, false),
            Action::FreeEni {
                eni: "eni-2".into()
            }
        );
        assert_eq!(
            t.decide(&idle[..2], false),
            Action::FreeEni {
                eni: "eni-1".into()
            }
        );
        assert_eq!(t.decide(&idle[..1], false), Action::None);
        // An ENI with a cooling IP is not unused.
        let cooling = [
            eni("eni-0", 0, 9, 0, 0),
            eni("eni-1", 1, 9, 0, 1),
            eni("eni-2", 2, 9, 0, 0),
        ];
        assert_eq!(
            t.decide(&cooling, false),
            Action::FreeEni {
                eni: "eni-2".into()
            }
        );
    }

    #[test]
    fn warm_ip_target_allocates_and_releases_in_batches() {
        let t = targets(1, Some(3), None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 0, 0, 0)], false),
            Action::Assign {
                eni: "eni-0".into(),
                count: 3
            }
        );
        assert_eq!(t.decide(&[eni("eni-0", 0, 3, 0, 0)], false), Action::None);
        // Two pods: two short.
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 3, 2, 0)], false),
            Action::Assign {
                eni: "eni-0".into(),
                count: 2
            }
        );
        // Cooling IPs are not available, and not released either.
        assert_eq!(t.decide(&[eni("eni-0", 0, 5, 0, 2)], false), Action::None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 5, 0, 0)], false),
            Action::Unassign {
                eni: "eni-0".into(),
                count: 2
            }
        );
        // The primary is full: the shortfall goes to a new ENI, no bigger than needed.
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 9, 8, 0)], false),
            Action::CreateEni { ips: 2 }
        );
        // IPs drain from the newest ENI, and an emptied ENI is freed.
        let two = [eni("eni-0", 0, 9, 0, 0), eni("eni-1", 1, 2, 0, 0)];
        assert_eq!(
            t.decide(&two, false),
            Action::Unassign {
                eni: "eni-1".into(),
                count: 2
            }
        );
        let two = [eni("eni-0", 0, 3, 0, 0), eni("eni-1", 1, 0, 0, 0)];
        assert_eq!(
            t.decide(&two, false),
            Action::FreeEni {
                eni: "eni-1".into()
            }
        );
    }

    #[test]
    fn minimum_ip_target_keeps_a_floor() {
        let t = targets(1, None, Some(5));
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 2, 0, 0)], false),
            Action::Assign {
                eni: "eni-0".into(),
                count: 3
            }
        );
        // 5 on the node, none assigned: over WARM_IP_TARGET (0) but at the minimum.
        assert_eq!(t.decide(&[eni("eni-0", 0, 5, 0, 0)], false), Action::None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 7, 0, 0)], false),
            Action::Unassign {
                eni: "eni-0".into(),
                count: 2
            }
        );
        // With both: warm IPs on top of the assigned ones, never under the minimum.
        let t = targets(1, Some(2), Some(5));
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 5, 4, 0)], false),
            Action::Assign {
                eni: "eni-0".into(),
                count: 1
            }
        );
    }

    #[test]
    fn warm_eni_zero_allocates_only_when_empty() {
        let t = targets(0, None, None);
        assert_eq!(
            t.decide(&[eni("eni-0", 0, 9, 9, 0)], false),
            Action::CreateEni { ips: 9 }
        );
        assert_eq!(t.decide(&[eni("eni-0", 0, 9, 8, 0)], false), Action::None);
    }
}
