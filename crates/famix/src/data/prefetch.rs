//! An ordered, bounded parallel map: worker threads compute items ahead of the
//! consumer (decoding, augmentation) while the device works; results come back in
//! index order, at most `ahead` items in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

/// Results of `ordered_map`, in index order.
pub struct OrderedMap<T> {
    results: Receiver<(usize, T)>,
    tickets: Option<Sender<()>>,
    pending: BTreeMap<usize, T>,
    next: usize,
    total: usize,
    workers: Vec<JoinHandle<()>>,
    /// Set when a worker panicked (a bug): the consumer re-raises it instead of waiting forever.
    panicked: Arc<Mutex<Option<String>>>,
}

/// Maps `f` over `0..total` on `workers` threads, yielding results in order.
pub fn ordered_map<T, F>(total: usize, workers: usize, ahead: usize, f: F) -> OrderedMap<T>
where
    T: Send + 'static,
    F: Fn(usize) -> T + Send + Sync + 'static,
{
    let ahead = ahead.max(1);
    let (ticket_tx, ticket_rx) = bounded::<()>(ahead);
    for _ in 0..ahead {
        ticket_tx.send(()).unwrap();
    }
    let (res_tx, res_rx) = unbounded();
    let counter = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let panicked = Arc::new(Mutex::new(None));
    let handles = (0..workers.max(1))
        .map(|_| {
            let (ticket_rx, res_tx, counter, f) = (ticket_rx.clone(), res_tx.clone(), counter.clone(), f.clone());
            let panicked = panicked.clone();
            std::thread::spawn(move || {
                while ticket_rx.recv().is_ok() {
                    let i = counter.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))) {
                        Ok(v) => {
                            if res_tx.send((i, v)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let msg = e
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            *panicked.lock().unwrap() = Some(format!("item {i}: {msg}"));
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    OrderedMap { results: res_rx, tickets: Some(ticket_tx), pending: BTreeMap::new(), next: 0, total, workers: handles, panicked }
}

impl<T> Iterator for OrderedMap<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.next >= self.total {
            return None;
        }
        loop {
            if let Some(v) = self.pending.remove(&self.next) {
                self.next += 1;
                if let Some(t) = &self.tickets {
                    let _ = t.try_send(());
                }
                return Some(v);
            }
            match self.results.recv_timeout(Duration::from_millis(200)) {
                Ok((i, v)) => {
                    self.pending.insert(i, v);
                }
                Err(_) => {
                    if let Some(msg) = self.panicked.lock().unwrap().clone() {
                        panic!("a data-loading worker panicked on {msg}");
                    }
                }
            }
        }
    }
}

impl<T> Drop for OrderedMap<T> {
    fn drop(&mut self) {
        // Closing the ticket channel ends the workers after their current item.
        self.tickets = None;
        while self.results.try_recv().is_ok() {}
        for h in self.workers.drain(..) {
            // Drain results so no worker blocks on a full queue while we join.
            while !h.is_finished() {
                while self.results.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = h.join();
        }
    }
}

/// Worker threads to use by default: the cores minus one for the main thread.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).saturating_sub(1).clamp(1, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_and_complete() {
        let v: Vec<usize> = ordered_map(100, 4, 8, |i| {
            std::thread::sleep(std::time::Duration::from_micros(((i * 37) % 11) as u64 * 50));
            i * 2
        })
        .collect();
        assert_eq!(v, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "worker panicked on item 3")]
    fn worker_panics_surface_instead_of_hanging() {
        let it = ordered_map(10, 2, 4, |i| if i == 3 { panic!("boom") } else { i });
        let _: Vec<usize> = it.collect();
    }

    #[test]
    fn early_drop_shuts_down() {
        let mut it = ordered_map(1000, 3, 4, |i| i);
        assert_eq!(it.next(), Some(0));
        drop(it);
    }
}
