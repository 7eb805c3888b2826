//! The gateway's clock: the time every admission is made at. The binary owns one and hands it
//! to the gateway; tests hand in a fixed one. The policy core only ever receives a time.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use aalgate_policy::Timestamp;

/// A clock that never runs backwards.
///
/// A wall clock stepped back (NTP, an operator, a VM resume) must not reopen a session whose
/// idle or absolute limit has passed. So a reading is the latest of: the wall clock; the wall
/// clock at the clock's creation plus the monotonic time since; and the newest time seen in
/// shared state ([`Clock::observe`]). A clock stepped forward only makes limits arrive early:
/// that fails closed.
pub struct Clock {
    source: Source,
    /// The newest time seen written by anyone (this process, another instance, the floor
    /// saved before a restart).
    high_water: AtomicU64,
}

enum Source {
    System { wall0: SystemTime, mono0: Instant },
    Fixed(AtomicU64),
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock {
            source: Source::System {
                wall0: SystemTime::now(),
                mono0: Instant::now(),
            },
            high_water: AtomicU64::new(0),
        }
    }

    /// A clock that reads `t` until [`Clock::set`] moves it (tests).
    pub fn fixed(t: Timestamp) -> Clock {
        Clock {
            source: Source::Fixed(AtomicU64::new(t.0)),
            high_water: AtomicU64::new(0),
        }
    }

    /// Moves a fixed clock's wall time (either way, as a stepped clock would); a system
    /// clock ignores it.
    pub fn set(&self, t: Timestamp) {
        if let Source::Fixed(w) = &self.source {
            w.store(t.0, Ordering::Relaxed);
        }
    }

    /// The wall time, as the system (or the test) says.
    fn wall(&self) -> Timestamp {
        match &self.source {
            Source::System { .. } => Timestamp::wall(),
            Source::Fixed(w) => Timestamp(w.load(Ordering::Relaxed)),
        }
    }

    /// The current time, never earlier than a time this clock has already given or seen.
    pub fn now(&self) -> Timestamp {
        let t = match &self.source {
            Source::System { wall0, mono0 } => {
                let floor = *wall0 + mono0.elapsed();
                Timestamp::from_system_time(SystemTime::now().max(floor))
            }
            Source::Fixed(w) => Timestamp(w.load(Ordering::Relaxed)),
        };
        Timestamp(t.0.max(self.high_water.load(Ordering::Relaxed)))
    }

    /// Records a time read from shared state (a session's `last_seen`, the floor saved before
    /// a restart), so that this clock does not run behind it. Times more than
    /// [`Timestamp::MAX_OBSERVED_AHEAD`] past the wall clock are ignored: one corrupt record
    /// or a fast instance must not expire sessions everywhere.
    pub fn observe(&self, t: Timestamp) {
        if t <= self.wall().plus(Timestamp::MAX_OBSERVED_AHEAD) {
            self.high_water.fetch_max(t.0, Ordering::Relaxed);
        }
    }

    /// Raises the clock to the floor a previous run saved in `path`, so a wall clock stepped
    /// back across a restart (by up to [`Timestamp::MAX_OBSERVED_AHEAD`]; sessions stamped
    /// further ahead are ended) cannot reopen a session. A missing or unreadable file is
    /// ignored.
    pub fn load_floor(&self, path: &Path) {
        if let Some(t) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            self.observe(Timestamp(t));
        }
    }

    /// Saves the current time as the floor for the next run (written whole, then renamed).
    pub fn save_floor(&self, path: &Path) {
        let tmp = path.with_extension("tmp");
        let ok = std::fs::write(&tmp, self.now().0.to_string())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = ok {
            tracing::debug!(error = %e, path = %path.display(), "cannot save the clock floor");
        }
    }
}

impl aalgate_session::StoreClock for Clock {
    fn now(&self) -> Timestamp {
        Clock::now(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn never_runs_backwards_and_trusts_only_near_futures() {
        let c = Clock::fixed(Timestamp(1_000_000));
        let a = c.now();
        c.observe(a.plus(Duration::from_secs(120)));
        assert_eq!(c.now(), a.plus(Duration::from_secs(120)));
        // Far-future values (a corrupt record, a fast instance) are not trusted.
        c.observe(a.plus(Duration::from_secs(3600)));
        assert_eq!(c.now(), a.plus(Duration::from_secs(120)));
        // The wall clock stepped back: the reading stays.
        c.set(Timestamp(999_000));
        assert_eq!(c.now(), a.plus(Duration::from_secs(120)));
        c.set(Timestamp(2_000_000));
        assert_eq!(c.now(), Timestamp(2_000_000));
    }

    #[test]
    fn the_system_clock_keeps_its_floor_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock-floor");
        let c = Clock::system();
        let t = c.now();
        assert!(
            t.0.abs_diff(Timestamp::wall().0) <= 1,
            "{t} is not the wall clock"
        );
        std::fs::write(&path, t.plus(Duration::from_secs(200)).0.to_string()).unwrap();
        let next = Clock::system();
        next.load_floor(&path);
        assert!(next.now() >= t.plus(Duration::from_secs(200)));
        next.save_floor(&path);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
                >= t.0 + 200
        );
    }
}
