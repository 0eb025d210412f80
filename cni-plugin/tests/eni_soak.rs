//! The leak soak (needs root, as CI runs): 1000 pod ADD/DEL cycles through the built
//! `vpc-cni` in real network namespaces, against `ipamd --mode eni` on the EC2 emulator
//! (`common/world.rs`), while ipamd is `kill -9`ed and restarted at random moments.
//! The test plays the runtime: a failed ADD is followed by a DEL (the spec's rule) and
//! retried; a DEL must succeed, ipamd up or not. Afterwards nothing may be left: every
//! IP free in ipamd and ipamd's pool the one EC2 lists, no pod veth, /32 route or
//! policy rule on the node, no assignment in ipamd's store, no namespace.
//!
//! The restarts are drawn from a seeded generator; the seed is printed, and
//! `SOAK_SEED=N` replays it (`SOAK_CYCLES=N` changes the count).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cni_plugin::aws::ec2::Ec2;
use serde_json::Value;

mod common;
#[path = "common/world.rs"]
mod world;
use common::{ip_json, quiet, run};
use world::{World, block_on, eventually, pool_ips};

/// Pods in flight at once.
const WORKERS: usize = 4;

/// xorshift64*: enough randomness to place restarts, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A pod namespace, removed when dropped (also when the test fails).
struct PodNs(String);

impl PodNs {
    fn new(name: String) -> PodNs {
        run("ip", &["netns", "add", &name]);
        PodNs(name)
    }

    fn remove(&self) {
        let _ = quiet("ip", &["netns", "del", &self.0]);
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The ipamd the chaos thread kills and restarts; killed when dropped.
struct Daemon(Option<Child>);

impl Daemon {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops the other threads when one fails, so the failure is reported at once.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

struct Soak<'w> {
    w: &'w World,
    conf: Value,
    /// IPs held by pods between their ADD and DEL: an ADD may never get one of these.
    held: Mutex<HashMap<Ipv4Addr, String>>,
    /// Every IP a pod got, for the final checks.
    seen: Mutex<BTreeSet<Ipv4Addr>>,
    add_failures: AtomicUsize,
}

impl Soak<'_> {
    fn cycle(&self, i: usize, rng: &mut Rng) {
        let ns = PodNs::new(format!("vpccni-soak-{}-{i}", self.w.tag));
        let result = self.add(&ns.0);
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.trim_end_matches("/32").parse().ok())
            .unwrap_or_else(|| panic!("ADD result without an IPv4 address: {result}"));
        if let Some(other) = self.held.lock().unwrap().insert(ip, ns.0.clone()) {
            panic!("{ip} was handed to {} while {other} still holds it", ns.0);
        }
        self.seen.lock().unwrap().insert(ip);
        // The address stays assigned until ipamd's release: forget it first.
        self.held.lock().unwrap().remove(&ip);
        // Sometimes the sandbox's namespace is gone before its DEL (the spec allows it).
        if rng.chance(10) {
            ns.remove();
        }
        let mut conf = self.conf.clone();
        conf["prevResult"] = result;
        let out = self.w.cni("DEL", &ns.0, &conf);
        assert!(
            out.status.success(),
            "DEL of {} must succeed, ipamd up or down: {} {}",
            ns.0,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// ADD until it succeeds, DELing after each failure as a runtime must.
    fn add(&self, ns: &str) -> Value {
        // ipamd may take a while to come back on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            let out = self.w.cni("ADD", ns, &self.conf);
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).unwrap();
            }
            self.add_failures.fetch_add(1, Ordering::Relaxed);
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            // While ipamd restarts the plugin says "try again later" (11); anything else
            // is a bug the soak must not hide.
            assert_eq!(
                err["code"],
                11,
                "ADD of {ns} failed: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let del = self.w.cni("DEL", ns, &self.conf);
            assert!(
                del.status.success(),
                "DEL after a failed ADD of {ns}: {}",
                String::from_utf8_lossy(&del.stdout)
            );
            assert!(
                Instant::now() < deadline,
                "ADD of {ns} still fails after 150 s: {err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_thousand_pods_with_ipamd_killed_at_random_leak_nothing() {
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let cycles = env_u64("SOAK_CYCLES").unwrap_or(1000) as usize;
    println!("soak seed {seed} (SOAK_SEED={seed} replays it), {cycles} cycles");

    let mut w = World::with_ipamd_args(
        0,
        // No cooldown, so 1000 cycles do not need 1000 IPs; SNAT on, so pods get
        // destination-limited rules.
        &[("IP_COOLDOWN_PERIOD", "0")],
        &["--housekeeping-interval", "1"],
    );
    w.wait_pool(9, 9, Duration::from_secs(60));
    let daemon = Mutex::new(Daemon(w.ipamd.take()));
    let soak = Soak {
        conf: w.conf(),
        w: &w,
        held: Mutex::new(HashMap::new()),
        seen: Mutex::new(BTreeSet::new()),
        add_failures: AtomicUsize::new(0),
    };
    let next = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let restarts = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let chaos = s.spawn(|| {
            let _stop_all = StopOnPanic(&done);
            let mut rng = Rng::new(seed);
            loop {
                let up = rng.millis(500, 4000);
                let until = Instant::now() + up;
                while Instant::now() < until {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                daemon.lock().unwrap().kill();
                restarts.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(rng.millis(1, 500));
                daemon.lock().unwrap().0 = Some(w.spawn_ipamd());
            }
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|n| {
                let (soak, next, done) = (&soak, &next, &done);
                s.spawn(move || {
                    let _stop_all = StopOnPanic(done);
                    let mut rng = Rng::new(seed ^ (n as u64 + 1).wrapping_mul(0x9e37_79b9));
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= cycles || done.load(Ordering::Relaxed) {
                            return;
                        }
                        soak.cycle(i, &mut rng);
                    }
                })
            })
            .collect();
        let joined: Vec<_> = workers.into_iter().map(|h| h.join()).collect();
        let worker_panic = joined.into_iter().find_map(Result::err);
        done.store(true, Ordering::Relaxed);
        chaos.join().unwrap();
        if let Some(p) = worker_panic {
            std::panic::resume_unwind(p);
        }
    });
    let soak_time = started.elapsed();
    let restarts = restarts.into_inner();
    println!(
        "{cycles} cycles in {soak_time:.1?}, {restarts} ipamd restarts, {} failed ADDs retried",
        soak.add_failures.load(Ordering::Relaxed)
    );
    assert!(restarts > 0, "the soak never restarted ipamd");
    let seen = soak.seen.into_inner().unwrap();

    // One more crash and restart: the store as replayed from disk is what is checked.
    let mut daemon = daemon.into_inner().unwrap();
    if daemon.0.is_none() {
        daemon.0 = Some(w.spawn_ipamd());
    }
    let deferred = cni_plugin::ipam::deferred::dir_for(&w.socket());
    eventually(
        "ipamd releases every address",
        Duration::from_secs(20),
        || {
            let s = w.status();
            let pending = std::fs::read_dir(&deferred).map_or(0, |d| d.count());
            (s.assigned == 0 && pending == 0)
                .then_some(())
                .ok_or_else(|| format!("{} assigned, {pending} deferred DELs: {s:?}", s.assigned))
        },
    );
    daemon.kill();
    daemon.0 = Some(w.spawn_ipamd());
    let journal = std::fs::read_to_string(w.dir.path().join("state").join("eni.journal")).unwrap();
    assert!(
        journal.lines().all(|l| !l.contains(r#""op":"assign""#)),
        "the store still holds assignments: {journal}"
    );

    // ipamd's pool is what EC2 lists, all of it free.
    eventually(
        "ipamd's pool and EC2 agree, nothing assigned",
        Duration::from_secs(60),
        || {
            let s = w.status();
            let ours = pool_ips(&s);
            let ec2 = w.ec2_secondary_ips();
            (s.assigned == 0 && s.free as usize == ours.len() && ours == ec2)
                .then_some(())
                .ok_or_else(|| format!("status {s:?}; EC2 lists {ec2:?}"))
        },
    );
    // An ENI ipamd is freeing right now is detached a moment before it is deleted.
    eventually("no detached ENI is left", Duration::from_secs(30), || {
        let leftovers = block_on(
            w.ec2
                .detached_enis_tagged("node.k8s.amazonaws.com/instance_id", w.instance_id()),
        )
        .unwrap();
        leftovers
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("ENIs leaked: {leftovers:?}"))
    });

    // Nothing of any pod is left on the node.
    // (A pod's veth pair goes with its netns, which the kernel destroys in the background.)
    eventually("no pod veth is left", Duration::from_secs(10), || {
        let veths: Vec<Value> = ip_json(&["-n", &w.node_ns, "link", "show"])
            .into_iter()
            .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("eni")))
            .collect();
        veths
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("pod veths left: {veths:?}"))
    });
    let is_pod_ip = |v: &Value| {
        v.as_str()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .is_some_and(|ip| seen.contains(&ip))
    };
    let routes = ip_json(&["-n", &w.node_ns, "route", "show", "table", "all"]);
    let pod_routes: Vec<&Value> = routes.iter().filter(|r| is_pod_ip(&r["dst"])).collect();
    assert!(pod_routes.is_empty(), "pod routes left: {pod_routes:?}");
    let rules = ip_json(&["-n", &w.node_ns, "rule", "show"]);
    let pod_rules: Vec<&Value> = rules
        .iter()
        .filter(|r| is_pod_ip(&r["src"]) || is_pod_ip(&r["dst"]))
        .collect();
    assert!(pod_rules.is_empty(), "pod rules left: {pod_rules:?}");
    let prefix = format!("vpccni-soak-{}-", w.tag);
    let namespaces = run("ip", &["netns", "list"]);
    assert!(
        namespaces.lines().all(|l| !l.starts_with(&prefix)),
        "namespaces left: {namespaces}"
    );
    drop(daemon);
    println!("soak and checks in {:.1?}", started.elapsed());
}
