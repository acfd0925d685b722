//! The bcrypt gate: one verification at a time on one thread, behind a queue short enough to
//! drain in about [`QUEUE_BUDGET`], with at most [`PER_CLIENT`] admitted per client address.
//! A request that cannot be admitted is refused at once (the caller answers 429); it never
//! waits, never takes a thread and never burns a core.
//!
//! Why not `spawn_blocking` behind a lock (the previous design): every waiting request held a
//! blocking-pool thread (300 wrong passwords grew the pool from 20 to 316 threads), the queue
//! was unbounded, and a real scraper's first login waited behind all of them (11 s measured,
//! past Prometheus' 10 s scrape timeout). Here a flood from one address holds one slot, so
//! other clients always find room unless many addresses flood at once; already-verified
//! credentials never reach the gate (see `auth.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// The queue holds about this much bcrypt work, so a newly admitted login is answered within
/// roughly this time plus its own verification.
pub const QUEUE_BUDGET: Duration = Duration::from_secs(2);
/// Bounds on the number of admitted verifications (running + queued). The floor leaves room
/// for other clients when one address holds its slot, even with the slowest allowed hashes.
const MIN_CAPACITY: usize = 4;
const MAX_CAPACITY: usize = 16;
/// Verifications one client address may have admitted at once. An honest scraper needs one
/// (after it, its credentials are cached); an address that floods gets 429 for the rest.
pub const PER_CLIENT: usize = 1;

type Work = Box<dyn FnOnce() -> bool + Send>;

pub struct Gate {
    jobs: SyncSender<Job>,
    admitted: Arc<Mutex<Admitted>>,
    capacity: usize,
}

struct Job {
    work: Work,
    reply: oneshot::Sender<bool>,
    /// Released when the job is done or skipped, not when the requester hangs up: a slot
    /// stands for work the thread still has to look at.
    _slot: Slot,
}

#[derive(Default)]
struct Admitted {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// Who counts as one client: an IPv4 address, an IPv6 /64 (one host usually has a whole /64),
/// or "unknown" when the request did not come through our server (handler tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
    Unknown,
}

impl ClientKey {
    fn of(addr: Option<SocketAddr>) -> ClientKey {
        match addr.map(|a| a.ip().to_canonical()) {
            Some(IpAddr::V4(v4)) => ClientKey::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                ClientKey::V6Prefix(prefix)
            }
            None => ClientKey::Unknown,
        }
    }
}

struct Slot {
    admitted: Arc<Mutex<Admitted>>,
    client: ClientKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        a.total = a.total.saturating_sub(1);
        if let Some(n) = a.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                a.per_client.remove(&self.client);
            }
        }
    }
}

/// Capacity for a verification that takes `cost`: as many as fit in [`QUEUE_BUDGET`].
fn capacity_for(cost: Duration) -> usize {
    let n = QUEUE_BUDGET.as_nanos() / cost.as_nanos().max(1);
    usize::try_from(n)
        .unwrap_or(MAX_CAPACITY)
        .clamp(MIN_CAPACITY, MAX_CAPACITY)
}

impl Gate {
    /// Starts the verification thread. `cost` is how long one verification takes here (the
    /// caller measures one); it sizes the queue.
    pub fn new(cost: Duration) -> std::io::Result<Gate> {
        let capacity = capacity_for(cost);
        let (jobs, rx) = sync_channel::<Job>(capacity);
        std::thread::Builder::new()
            .name("sw-bcrypt".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                // Ends when the gate (the only sender) is dropped.
                for Job { work, reply, _slot } in rx {
                    // The client hung up while queued: its answer is not wanted.
                    if reply.is_closed() {
                        continue;
                    }
                    // A panic denies this login and leaves the thread serving the next.
                    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                        .unwrap_or(false);
                    // Free the slot before answering, so the answered client may come again.
                    drop(_slot);
                    let _ = reply.send(ok);
                }
            })?;
        Ok(Gate {
            jobs,
            admitted: Arc::new(Mutex::new(Admitted::default())),
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `work` for `client`, or returns `None` at once when the queue is full or the
    /// client already has [`PER_CLIENT`] verifications admitted.
    pub fn submit(
        &self,
        client: Option<SocketAddr>,
        work: impl FnOnce() -> bool + Send + 'static,
    ) -> Option<oneshot::Receiver<bool>> {
        let client = ClientKey::of(client);
        {
            let mut a = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
            let mine = a.per_client.get(&client).copied().unwrap_or(0);
            if a.total >= self.capacity || mine >= PER_CLIENT {
                return None;
            }
            a.total += 1;
            *a.per_client.entry(client).or_default() += 1;
        }
        let slot = Slot {
            admitted: Arc::clone(&self.admitted),
            client,
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work: Box::new(work),
            reply,
            _slot: slot,
        };
        // Cannot be full (admission counts what the channel holds), but never block here.
        self.jobs.try_send(job).ok().map(|()| answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn capacity_follows_the_cost_of_one_verification() {
        assert_eq!(capacity_for(Duration::from_millis(50)), MAX_CAPACITY);
        assert_eq!(capacity_for(Duration::from_millis(250)), 8);
        assert_eq!(capacity_for(Duration::from_secs(1)), MIN_CAPACITY);
        assert_eq!(capacity_for(Duration::from_secs(30)), MIN_CAPACITY);
        assert_eq!(capacity_for(Duration::ZERO), MAX_CAPACITY);
    }

    #[test]
    fn client_keys() {
        assert_eq!(
            ClientKey::of(addr("[::ffff:10.0.0.1]:5")),
            ClientKey::of(addr("10.0.0.1:6")),
            "v4-mapped v6 is the v4 client"
        );
        assert_eq!(
            ClientKey::of(addr("[2001:db8:1:2::1]:1")),
            ClientKey::of(addr("[2001:db8:1:2:ffff::9]:2")),
            "one /64 is one client"
        );
        assert_ne!(
            ClientKey::of(addr("[2001:db8:1:2::1]:1")),
            ClientKey::of(addr("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(ClientKey::of(None), ClientKey::Unknown);
    }

    /// A job that blocks the worker until released, to fill the queue deterministically.
    fn blocker() -> (mpsc::Sender<()>, impl FnOnce() -> bool + Send + 'static) {
        let (tx, rx) = mpsc::channel::<()>();
        (tx, move || rx.recv().is_ok())
    }

    #[tokio::test]
    async fn one_slot_per_client_and_a_bounded_queue() {
        let gate = Gate::new(Duration::from_secs(1)).unwrap();
        assert_eq!(gate.capacity(), MIN_CAPACITY);
        let (release, work) = blocker();
        let first = gate.submit(addr("10.0.0.1:1"), work).unwrap();
        assert!(
            gate.submit(addr("10.0.0.1:2"), || true).is_none(),
            "second from the same address is refused"
        );
        let mut others = Vec::new();
        for i in 2..=MIN_CAPACITY {
            others.push(
                gate.submit(addr(&format!("10.0.0.{i}:1")), || true)
                    .unwrap(),
            );
        }
        assert!(
            gate.submit(addr("10.0.0.99:1"), || true).is_none(),
            "full queue refuses everyone"
        );
        release.send(()).unwrap();
        assert!(first.await.unwrap());
        for o in others {
            assert!(o.await.unwrap());
        }
        // Slots are released once the jobs ran.
        let again = gate.submit(addr("10.0.0.1:3"), || false).unwrap();
        assert!(!again.await.unwrap());
    }

    #[tokio::test]
    async fn a_panicking_verification_denies_and_the_thread_lives_on() {
        let gate = Gate::new(Duration::from_secs(1)).unwrap();
        let bad = gate
            .submit(addr("10.0.0.1:1"), || panic!("bcrypt blew up"))
            .unwrap();
        assert!(!bad.await.unwrap());
        let next = gate.submit(addr("10.0.0.1:2"), || true).unwrap();
        assert!(next.await.unwrap());
    }

    #[tokio::test]
    async fn abandoned_jobs_are_skipped_and_free_their_slot() {
        let gate = Gate::new(Duration::from_secs(1)).unwrap();
        let (release, work) = blocker();
        let running = gate.submit(addr("10.0.0.1:1"), work).unwrap();
        let ran = Arc::new(Mutex::new(false));
        let ran2 = Arc::clone(&ran);
        let abandoned = gate
            .submit(addr("10.0.0.2:1"), move || {
                *ran2.lock().unwrap() = true;
                true
            })
            .unwrap();
        drop(abandoned); // the client hung up while queued
        release.send(()).unwrap();
        assert!(running.await.unwrap());
        let next = gate.submit(addr("10.0.0.2:2"), || true).unwrap();
        assert!(next.await.unwrap(), "slot of the abandoned job is free");
        assert!(!*ran.lock().unwrap(), "abandoned work was not run");
    }
}
