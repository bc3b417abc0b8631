//! Per-core striping: what every call to a peer writes is split into stripes, one per
//! core (up to [`MAX_STRIPES`]), each on its own cache line. A thread writes the stripe of
//! its index, so calls to one hot peer from different cores do not contend; whoever needs
//! the whole (a sum, every waiter) reads every stripe, which is rare. After hdrhistogram's
//! `Recorder` and Java's `LongAdder`.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::LazyLock;

use crossbeam_utils::CachePadded;

/// Most stripes per striped value: past this, threads share stripes (with 64 cores, two
/// threads a stripe), which bounds the memory a peer costs.
pub(crate) const MAX_STRIPES: usize = 32;

/// Stripes per striped value: the machine's parallelism as a power of two, at most
/// [`MAX_STRIPES`].
static STRIPES: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .next_power_of_two()
        .min(MAX_STRIPES)
});

/// The next thread's index.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's index, given at its first use: threads take indices in turn, so the
    /// worker threads of a runtime spread over the stripes.
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Moves this thread to the next free index: called by a thread that found its stripe
/// busy (another thread shares it), so two threads that collide part.
pub(crate) fn move_thread() {
    THREAD.with(|t| t.set(NEXT_THREAD.fetch_add(1, Relaxed)));
}

/// This thread's index, which [`Striped`] reduces to its stripe.
#[inline]
pub(crate) fn current() -> usize {
    THREAD.with(|t| {
        let mut i = t.get();
        if i == usize::MAX {
            i = NEXT_THREAD.fetch_add(1, Relaxed);
            t.set(i);
        }
        i
    })
}

/// One value per stripe, each on its own cache line.
pub(crate) struct Striped<T> {
    stripes: Box<[CachePadded<T>]>,
}

impl<T> Striped<T> {
    /// As many values as stripes, each made by `make`.
    pub(crate) fn new(make: impl FnMut() -> T) -> Self {
        Self::with_stripes(*STRIPES, make)
    }

    /// `n` stripes, rounded up to a power of two.
    pub(crate) fn with_stripes(n: usize, mut make: impl FnMut() -> T) -> Self {
        let n = n.max(1).next_power_of_two();
        let stripes = (0..n).map(|_| CachePadded::new(make())).collect();
        Striped { stripes }
    }

    /// The stripe this thread writes, and its index.
    #[inline]
    pub(crate) fn mine(&self) -> (usize, &T) {
        let i = current() & (self.stripes.len() - 1);
        (i, &self.stripes[i])
    }

    /// The stripe at `i` (as [`mine`](Self::mine) gave it).
    pub(crate) fn get(&self, i: usize) -> &T {
        &self.stripes[i & (self.stripes.len() - 1)]
    }

    /// Every stripe.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|s| &**s)
    }

    /// How many stripes there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.stripes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_stripe_and_threads_take_turns() {
        let striped = Striped::with_stripes(4, || 0u8);
        let (mine, _) = striped.mine();
        assert_eq!(striped.mine().0, mine, "a thread keeps its stripe");
        let others: Vec<usize> = (0..4)
            .map(|_| std::thread::spawn(current).join().unwrap())
            .collect();
        assert!(others.windows(2).all(|w| w[1] > w[0]), "{others:?}");
        assert_eq!(striped.iter().count(), 4);
        assert_eq!(Striped::with_stripes(0, || ()).len(), 1);
    }
}
