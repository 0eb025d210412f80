//! Locks per pod or sandbox. A kubelet that times out retries the same RunPodSandbox or
//! CreateContainer; the retry must wait for the first attempt and find its result. Requests
//! about different pods share nothing, so 30 pods created at once set up their networks in
//! parallel instead of queueing behind one another's CNI ADD.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLocks {
    // Weak: an entry lives only while someone holds or waits for its lock.
    locks: Mutex<HashMap<String, Weak<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: String) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, l| l.strong_count() > 0);
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_is_exclusive_and_other_keys_are_not() {
        let locks = Arc::new(KeyedLocks::default());
        let held = locks.lock("pod-a".into()).await;
        // Another key is free while pod-a is held.
        tokio::time::timeout(Duration::from_secs(1), locks.lock("pod-b".into()))
            .await
            .expect("a different key must not wait");
        // The same key waits until the holder lets go.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { drop(locks.lock("pod-a".into()).await) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "pod-a was locked twice at once");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter gets the lock once it is released")
            .unwrap();
        // Released keys are forgotten.
        let _ = locks.lock("pod-c".into()).await;
        assert!(locks.locks.lock().unwrap().len() <= 1);
    }
}
