//! Time as the gateway reads it: one [`Clock`], handed to the gateway when it starts, that
//! every decision about time reads (token expiry, consent lapse, rate-limit refill, sign-in,
//! pairing and export deadlines, held records). The store's own methods keep taking `now` as
//! an argument; the clock is what their callers read it from.
//!
//! - [`SystemClock`]: the system's wall clock. What the binary always uses.
//! - [`OffsetClock`]: the system's clock plus an offset that [`OffsetClock::advance`] grows.
//!   For end-to-end tests: real time keeps passing (network round trips, a provider's tokens
//!   stamped with real time), and a test that needs a deadline behind it moves the gateway's
//!   time forward instead of sleeping.
//! - [`ManualClock`]: stands still until told ([`ManualClock::set`], [`ManualClock::advance`]),
//!   backwards too. For unit tests that need exact instants.

use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

/// Where the time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// A clock shared by everything that reads it.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock ([`Utc::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(Self)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system's clock plus an offset that only grows: what end-to-end tests give the
/// gateway, so that a test can let an hour pass in no time while real time passes as well.
#[derive(Debug, Default)]
pub struct OffsetClock {
    /// Milliseconds ahead of the system clock.
    ahead_ms: AtomicI64,
}

impl OffsetClock {
    /// A clock that reads the system time until advanced.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock `by` forward (a negative `by` is ignored: this clock never goes back).
    pub fn advance(&self, by: TimeDelta) {
        let ms = by.num_milliseconds().max(0);
        self.ahead_ms
            .fetch_update(SeqCst, SeqCst, |a| Some(a.saturating_add(ms)))
            .ok();
    }

    /// How far ahead of the system clock it is.
    pub fn offset(&self) -> TimeDelta {
        TimeDelta::milliseconds(self.ahead_ms.load(SeqCst))
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }
}

/// A clock that stands still until set or advanced: the exact instants a unit test needs.
#[derive(Debug)]
pub struct ManualClock {
    /// Milliseconds since the epoch.
    at_ms: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `at` (to the millisecond).
    pub fn new(at: DateTime<Utc>) -> Self {
        Self {
            at_ms: AtomicI64::new(at.timestamp_millis()),
        }
    }

    /// Puts the clock at `at`, earlier or later.
    pub fn set(&self, at: DateTime<Utc>) {
        self.at_ms.store(at.timestamp_millis(), SeqCst);
    }

    /// Moves the clock by `by` (backwards when negative).
    pub fn advance(&self, by: TimeDelta) {
        let ms = by.num_milliseconds();
        self.at_ms
            .fetch_update(SeqCst, SeqCst, |a| Some(a.saturating_add(ms)))
            .ok();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.at_ms.load(SeqCst)).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_clock_runs_with_the_system_and_jumps_only_forward() {
        let clock = OffsetClock::new();
        let before = Utc::now();
        let read = clock.now();
        assert!(
            read >= before && read <= Utc::now(),
            "unadvanced, it is the system time"
        );
        clock.advance(TimeDelta::seconds(90));
        clock.advance(TimeDelta::seconds(-3600));
        assert_eq!(clock.offset(), TimeDelta::seconds(90), "never backwards");
        let before = Utc::now();
        let read = clock.now();
        assert!(read >= before + TimeDelta::seconds(90));
        assert!(read <= Utc::now() + TimeDelta::seconds(90));
    }

    #[test]
    fn the_manual_clock_stands_still_until_moved() {
        let t: DateTime<Utc> = "2026-03-08T01:59:59.250Z".parse().unwrap();
        let clock = ManualClock::new(t);
        assert_eq!(clock.now(), t);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now(), t, "real time does not move it");
        clock.advance(TimeDelta::milliseconds(750));
        assert_eq!(
            clock.now(),
            "2026-03-08T02:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        clock.advance(TimeDelta::hours(-1));
        assert_eq!(
            clock.now(),
            "2026-03-08T01:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        clock.set(t);
        assert_eq!(clock.now(), t);
    }

    #[test]
    fn the_system_clock_is_the_system_time() {
        let before = Utc::now();
        let read = SystemClock.now();
        assert!(read >= before && read <= Utc::now());
    }
}
