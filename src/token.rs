//! Cooperative interrupts for call chains: a flag checked at stopping points.
//!
//! An [`Interrupt`] token travels with a piece of work (in an `http::Request`'s extensions
//! the layer puts one there). Whoever holds a clone can fire it; the work stops at its next
//! [`checkpoint`](Interrupt::checkpoint), or at once where it awaits
//! [`cancelled`](Interrupt::cancelled) or runs under [`interruptible`]. The error says who
//! fired and where the chain recognized it. When the layer interrupts a call, it fires the
//! call's token with the same reason, so work deeper in the chain stops too. A call's token
//! is its own: a [`child`](Interrupt::child) of its caller's token if the request carried
//! one, so the caller's fire reaches the call but the layer's reaches no other call.
//!
//! ```
//! use tower_adaptive_timeout::{Chain, Interrupt, Reason};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let token = Interrupt::new();
//! let mut chain = Chain::new(token.clone());
//! let one = chain.step(async { 1 }).await.unwrap();
//! token.interrupt("user went away");
//! let err = chain.step(async move { one + 1 }).await.unwrap_err();
//! assert_eq!(err.reason(), &Reason::Manual("user went away".into()));
//! assert_eq!(chain.steps_done(), 1);
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Interrupted, Reason};
use crate::interrupt::Fired;

/// How a token's chain is named in errors fired by hand.
static CHAIN: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("<call chain>"));

/// A cooperative interrupt token. Clones share one flag.
#[derive(Clone)]
pub struct Interrupt {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    started: Instant,
    fired: OnceLock<Interrupted>,
    /// Shared by a token and all its descendants: a fire anywhere among them wakes every
    /// waiter, and each checks its own line of tokens.
    notify: Arc<Notify>,
    /// The token whose fire reaches this one too.
    parent: Option<Interrupt>,
}

impl Interrupt {
    /// A new, unfired token.
    pub fn new() -> Self {
        Interrupt {
            inner: Arc::new(TokenInner {
                started: Instant::now(),
                fired: OnceLock::new(),
                notify: Arc::new(Notify::new()),
                parent: None,
            }),
        }
    }

    /// A new token that fires when this one does, or when fired itself, which leaves this
    /// one alone: give each piece of work its own, so stopping one leaves the others
    /// running while stopping their caller stops them all.
    ///
    /// The layer gives each call such a child of the caller's token (when the request
    /// carries one): a caller's interrupt reaches every call it made, and the layer's
    /// interrupt of one call (its deadline, say) reaches that call only.
    ///
    /// ```
    /// use tower_adaptive_timeout::Interrupt;
    ///
    /// let caller = Interrupt::new();
    /// let (one, two) = (caller.child(), caller.child());
    /// one.interrupt("this call is over");
    /// assert!(!caller.is_interrupted() && !two.is_interrupted());
    /// caller.interrupt("the user went away");
    /// assert!(two.is_interrupted());
    /// ```
    pub fn child(&self) -> Interrupt {
        Interrupt {
            inner: Arc::new(TokenInner {
                started: Instant::now(),
                fired: OnceLock::new(),
                notify: self.inner.notify.clone(),
                parent: Some(self.clone()),
            }),
        }
    }

    /// Fires the token, saying why. Returns `false` if it had already fired (the first
    /// reason stands).
    #[track_caller]
    pub fn interrupt(&self, reason: impl Into<Cow<'static, str>>) -> bool {
        let here = Location::caller();
        let err = Interrupted::new(
            Reason::Manual(reason.into()),
            &CHAIN,
            self.inner.started.elapsed(),
            here,
            here,
        );
        self.fire(err)
    }

    /// Whether the token (or one it is a [`child`](Self::child) of) has fired.
    pub fn is_interrupted(&self) -> bool {
        self.fired().is_some()
    }

    /// A stopping point: `Err` if the token has fired, naming this line as where the
    /// interrupt was recognized.
    #[track_caller]
    pub fn checkpoint(&self) -> Result<(), Interrupted> {
        match self.fired() {
            Some(err) => Err(err.clone().recognized(Location::caller())),
            None => Ok(()),
        }
    }

    /// Completes when the token fires, with the error (recognized here).
    #[track_caller]
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            inner: interruptible(self.clone(), std::future::pending::<()>()),
        }
    }

    /// Fires the token with an error the layer already built. First fire wins.
    pub(crate) fn fire(&self, err: Interrupted) -> bool {
        let first = self.inner.fired.set(err).is_ok();
        if first {
            self.inner.notify.notify_waiters();
        }
        first
    }

    /// The error the token fired with, if it has: its own, else the nearest parent's.
    pub(crate) fn fired(&self) -> Option<&Interrupted> {
        let mut token = self;
        loop {
            if let Some(err) = token.inner.fired.get() {
                return Some(err);
            }
            token = token.inner.parent.as_ref()?;
        }
    }

    /// [`Self::fired`], as the layer's record of a fire.
    pub(crate) fn fired_record(&self) -> Option<Fired> {
        let err = self.fired()?;
        Some(Fired {
            reason: err.reason().clone(),
            fired_at: err.fired_at(),
        })
    }

    /// A future woken when the token fires. Create it, then check [`Self::fired`].
    pub(crate) fn notified(&self) -> OwnedNotified {
        self.inner.notify.clone().notified_owned()
    }
}

impl Drop for TokenInner {
    fn drop(&mut self) {
        // Drop a long line of parents in a loop, not one nested drop per generation.
        let mut parent = self.parent.take();
        while let Some(token) = parent {
            parent = Arc::into_inner(token.inner).and_then(|mut inner| inner.parent.take());
        }
    }
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt::new()
    }
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("fired", &self.fired())
            .finish()
    }
}

/// Runs `fut` until it completes or `token` fires, whichever comes first; a token that
/// has already fired stops it before it starts.
#[track_caller]
pub fn interruptible<F: Future>(token: Interrupt, fut: F) -> Interruptible<F> {
    Interruptible {
        fut,
        notified: None,
        token,
        at: Location::caller(),
    }
}

pin_project! {
    /// The future of [`interruptible`].
    pub struct Interruptible<F> {
        #[pin]
        fut: F,
        #[pin]
        notified: Option<OwnedNotified>,
        token: Interrupt,
        at: &'static Location<'static>,
    }
}

impl<F: Future> Future for Interruptible<F> {
    type Output = Result<F::Output, Interrupted>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if this.notified.is_none() {
                this.notified.set(Some(this.token.notified()));
            }
            if let Some(err) = this.token.fired() {
                return Poll::Ready(Err(err.clone().recognized(this.at)));
            }
            if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match this.notified.as_mut().as_pin_mut().map(|n| n.poll(cx)) {
                Some(Poll::Ready(())) => this.notified.set(None),
                _ => return Poll::Pending,
            }
        }
    }
}

pin_project! {
    /// The future of [`Interrupt::cancelled`].
    pub struct Cancelled {
        #[pin]
        inner: Interruptible<std::future::Pending<()>>,
    }
}

impl Future for Cancelled {
    type Output = Interrupted;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Interrupted> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(err),
            Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
        }
    }
}

/// A multi-step piece of work that stops at the next step once its token fires: the
/// `do_one` / `do_two` / `do_three` chain, with one error for the whole.
#[derive(Debug)]
pub struct Chain {
    token: Interrupt,
    done: u32,
}

impl Chain {
    /// A chain stopped by `token`.
    pub fn new(token: Interrupt) -> Self {
        Chain { token, done: 0 }
    }

    /// Runs one step: not at all if the token has fired, and cut short if it fires
    /// meanwhile. The error names this line as where the interrupt was recognized.
    #[track_caller]
    pub fn step<F: Future>(&mut self, fut: F) -> Step<'_, F> {
        Step {
            inner: interruptible(self.token.clone(), fut),
            done: &mut self.done,
        }
    }

    /// Steps that completed.
    pub fn steps_done(&self) -> u32 {
        self.done
    }

    /// The chain's token.
    pub fn token(&self) -> &Interrupt {
        &self.token
    }
}

pin_project! {
    /// The future of [`Chain::step`].
    pub struct Step<'a, F> {
        #[pin]
        inner: Interruptible<F>,
        done: &'a mut u32,
    }
}

impl<F: Future> Future for Step<'_, F> {
    type Output = Result<F::Output, Interrupted>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if out.is_ok() {
            **this.done += 1;
        }
        Poll::Ready(out)
    }
}
