//! Single-use tokens for streaming requests that expire after a minute, as upstream's
//! request cache: a URL handed out by Exec/PortForward works once, and only soon.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Request;

const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Tokens {
    pending: Mutex<HashMap<String, (Request, Instant)>>,
}

impl Tokens {
    /// Stores `request` under a new unguessable token.
    pub fn insert(&self, request: Request) -> String {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("reading /dev/urandom");
        let token = hex::encode(bytes);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, (_, at)| at.elapsed() < TTL);
        pending.insert(token.clone(), (request, Instant::now()));
        token
    }

    /// The request of `token`, once; `None` if unknown, used or expired.
    pub fn take(&self, token: &str) -> Option<Request> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (request, at) = pending.remove(token)?;
        (at.elapsed() < TTL).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let t = Tokens::default();
        let a = t.insert(Request::PortForward(Default::default()));
        let b = t.insert(Request::PortForward(Default::default()));
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(t.take(&a).is_some());
        assert!(t.take(&a).is_none());
        assert!(t.take("nope").is_none());
    }
}
