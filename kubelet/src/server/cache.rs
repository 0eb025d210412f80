//! A small time-bounded cache for TokenReview and SubjectAccessReview answers, so a
//! busy client does not cost an API round trip per request (upstream caches both).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many entries, expired ones are swept on insert; a flood of distinct
/// keys can then only keep live entries, which expire within the TTL.
const SWEEP_ABOVE: usize = 4096;

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new() -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (value, expires) = entries.get(key)?;
        (Instant::now() < *expires).then(|| value.clone())
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            let now = Instant::now();
            if entries.len() > SWEEP_ABOVE {
                entries.retain(|_, (_, expires)| *expires > now);
            }
            entries.insert(key, (value, now + ttl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let cache = TtlCache::new();
        cache.insert("a", 1, Duration::from_secs(60));
        cache.insert("b", 2, Duration::from_nanos(1));
        cache.insert("c", 3, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"b"), None);
        assert_eq!(cache.get(&"c"), None);
    }
}
