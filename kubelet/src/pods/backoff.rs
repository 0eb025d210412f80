//! Container restart back-off as upstream's doBackOff over flowcontrol.Backoff: the
//! first restart of a container is immediate and arms a 10 s delay; each later exit
//! waits out the current delay (counted from when that attempt finished), which
//! doubles to 5 min and starts over once a container ran long enough.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

pub const BACKOFF_START: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

struct Entry {
    delay: Duration,
    last_update: SystemTime,
}

#[derive(Default)]
pub struct RestartBackoff {
    entries: HashMap<String, Entry>,
}

impl RestartBackoff {
    /// Whether `name`, whose newest exited attempt finished at `finished`, must wait
    /// (`Some(current delay)`); otherwise the restart is recorded (upstream's Next)
    /// and it may start now.
    pub fn check(&mut self, name: &str, finished: SystemTime, now: SystemTime) -> Option<Duration> {
        // upstream's hasExpired: an exit long after the last restart starts over.
        let fresh = |e: &Entry| {
            finished
                .duration_since(e.last_update)
                .map_or(true, |d| d <= BACKOFF_MAX * 2)
        };
        let current = self.entries.get(name).filter(|e| fresh(e));
        if let Some(e) = current
            && now.duration_since(finished).unwrap_or_default() < e.delay
        {
            return Some(e.delay);
        }
        let delay = current.map_or(BACKOFF_START, |e| (e.delay * 2).min(BACKOFF_MAX));
        self.entries.insert(
            name.to_string(),
            Entry {
                delay,
                last_update: now,
            },
        );
        None
    }
}

/// A duration as Go prints it in upstream's messages: `10s`, `1m20s`, `5m0s`.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_like_upstream() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut b = RestartBackoff::default();
        // First exit: restart at once.
        assert_eq!(b.check("c", at(0), at(0)), None);
        // Second exit: 10 s from when it finished.
        assert_eq!(b.check("c", at(5), at(6)), Some(BACKOFF_START));
        assert_eq!(b.check("c", at(5), at(14)), Some(BACKOFF_START));
        assert_eq!(b.check("c", at(5), at(15)), None);
        // Then 20 s, 40 s, ... up to 5 min.
        assert_eq!(b.check("c", at(16), at(30)), Some(Duration::from_secs(20)));
        assert_eq!(b.check("c", at(16), at(36)), None);
        let mut t = 40;
        for _ in 0..10 {
            let exit = t;
            while b.check("c", at(exit), at(t)).is_some() {
                t += 1;
            }
        }
        assert_eq!(b.check("c", at(t), at(t)), Some(BACKOFF_MAX));
        // An exit long after the last restart starts over.
        let later = t + 3600;
        assert_eq!(b.check("c", at(later), at(later)), None);
        assert_eq!(
            b.check("c", at(later + 1), at(later + 1)),
            Some(BACKOFF_START)
        );
        // Per container.
        assert_eq!(b.check("other", at(later), at(later)), None);
    }

    #[test]
    fn durations_print_as_go() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}
