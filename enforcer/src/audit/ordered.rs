//! Work on a store's files on every core, its outputs taken in file order: what a reader
//! of the chain sees is what one loop over the files would give, only sooner.

use std::{
    sync::{
        Condvar, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, sync_channel},
    },
    thread,
};

/// Outputs one item's worker may hold before it waits for the reader to take them.
const QUEUED_PER_ITEM: usize = 1024;

/// How many items past the one being read a worker may start, per worker: with
/// [`QUEUED_PER_ITEM`] this bounds the memory a scan holds, whatever the store's size.
const AHEAD_PER_WORKER: usize = 2;

/// What the reader and the workers share.
struct Board<T> {
    /// Each item's receiving end, once its worker has started it.
    receivers: Vec<Option<Receiver<T>>>,
    /// The item being read.
    reading: usize,
    /// The reader stopped: workers start nothing more.
    stopped: bool,
}

/// Calls `work` on each of `items` on every core (the items started in order, one worker
/// per core, a few items ahead of the reader at most) and hands what each call emits to
/// `take`: all of the first item's outputs, then the second's, and so on. When `take`
/// returns `false` nothing more is taken, and the `emit` of running calls returns `false`
/// so they can stop early. A panicking `work` panics the caller.
pub fn for_each_in_order<I, T>(
    items: &[I],
    work: impl Fn(&I, &mut dyn FnMut(T) -> bool) + Sync,
    mut take: impl FnMut(T) -> bool,
) where
    I: Sync,
    T: Send,
{
    let workers = thread::available_parallelism()
        .map_or(1, usize::from)
        .min(items.len());
    if workers <= 1 {
        for item in items {
            let mut going = true;
            work(item, &mut |output| {
                going = going && take(output);
                going
            });
            if !going {
                return;
            }
        }
        return;
    }
    let board = Mutex::new(Board {
        receivers: items.iter().map(|_| None).collect(),
        reading: 0,
        stopped: false,
    });
    let changed = Condvar::new();
    let lock = || board.lock().unwrap_or_else(PoisonError::into_inner);
    let wait = |guard| changed.wait(guard).unwrap_or_else(PoisonError::into_inner);
    let next = AtomicUsize::new(0);
    let ahead = workers * AHEAD_PER_WORKER;
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let mut shared = lock();
                    while !shared.stopped && index >= shared.reading + ahead {
                        shared = wait(shared);
                    }
                    if shared.stopped {
                        break;
                    }
                    // The sender is dropped when the call ends (or unwinds): the reader
                    // then knows this item's outputs are all there.
                    let (sender, receiver) = sync_channel(QUEUED_PER_ITEM);
                    shared.receivers[index] = Some(receiver);
                    drop(shared);
                    changed.notify_all();
                    work(item, &mut |output| sender.send(output).is_ok());
                }
            });
        }
        'items: for index in 0..items.len() {
            let mut shared = lock();
            shared.reading = index;
            changed.notify_all();
            let receiver = loop {
                if let Some(receiver) = shared.receivers[index].take() {
                    break receiver;
                }
                shared = wait(shared);
            };
            drop(shared);
            for output in receiver {
                if !take(output) {
                    break 'items;
                }
            }
        }
        let mut shared = lock();
        shared.stopped = true;
        // Unblocks every worker waiting to send.
        shared.receivers.clear();
        drop(shared);
        changed.notify_all();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_in_item_order_and_stopping_stops() {
        let items: Vec<u64> = (0..40).collect();
        let work = |item: &u64, emit: &mut dyn FnMut(u64) -> bool| {
            // Later items finish sooner: order must come from the reader, not the clock.
            thread::sleep(std::time::Duration::from_micros(40 - item));
            for k in 0..3000 {
                if !emit(item * 10_000 + k) {
                    return;
                }
            }
        };
        let mut all = Vec::new();
        for_each_in_order(&items, work, |output| {
            all.push(output);
            true
        });
        let expected: Vec<u64> = items
            .iter()
            .flat_map(|item| (0..3000).map(move |k| item * 10_000 + k))
            .collect();
        assert_eq!(all, expected);
        let mut first = Vec::new();
        for_each_in_order(&items, work, |output| {
            first.push(output);
            first.len() < 5000
        });
        assert_eq!(first, expected[..5000]);
    }
}
